package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// The harness ceiling's bridge, compiled: Twilio media stream in, engine socket out, nothing
// else (no authentication, records or playback accounting). Caller payloads are cut out of the
// frame and forwarded as appends; output deltas become a media frame and a mark;
// speech_started becomes clear. Run against the same load as the real bridge, it measures what
// the generator, the engine and loopback cost on their own, without a Python bridge's own
// ceiling in the way (bench/noop_bridge.py is the Python one).

func runNoop(port int, engineURL string) error {
	upgrader := websocket.Upgrader{ReadBufferSize: 8192, WriteBufferSize: 8192}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		relay(conn, engineURL)
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

func relay(tw *websocket.Conn, engineURL string) {
	var streamSid string
	for streamSid == "" {
		_, msg, err := tw.ReadMessage()
		if err != nil {
			return
		}
		var event struct {
			Event string `json:"event"`
			Start struct {
				StreamSid string `json:"streamSid"`
			} `json:"start"`
		}
		if json.Unmarshal(msg, &event) == nil && event.Event == "start" {
			streamSid = event.Start.StreamSid
		}
	}
	rt, _, err := websocket.DefaultDialer.Dial(engineURL+"?model=gpt-realtime",
		http.Header{"Authorization": {"Bearer noop"}})
	if err != nil {
		return
	}
	defer rt.Close()
	var twMu, rtMu sync.Mutex
	write := func(mu *sync.Mutex, c *websocket.Conn, msg []byte) {
		mu.Lock()
		defer mu.Unlock()
		_ = c.WriteMessage(websocket.TextMessage, msg)
	}
	write(&rtMu, rt, []byte(`{"type":"session.update","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcmu"}},"output":{"format":{"type":"audio/pcmu"}}}}}`))
	write(&rtMu, rt, []byte(`{"type":"response.create"}`))
	done := make(chan struct{}, 2)
	go func() { // caller -> engine
		defer func() { done <- struct{}{} }()
		key := []byte(`"payload":"`)
		msg := make([]byte, 0, 512)
		for {
			_, frame, err := tw.ReadMessage()
			if err != nil {
				return
			}
			i := bytes.Index(frame, key)
			if i < 0 {
				if bytes.Contains(frame, []byte(`"event":"stop"`)) {
					return
				}
				continue
			}
			audio := frame[i+len(key):]
			audio = audio[:max(bytes.IndexByte(audio, '"'), 0)]
			msg = append(append(append(msg[:0], `{"type":"input_audio_buffer.append","audio":"`...), audio...), `"}`...)
			write(&rtMu, rt, msg)
		}
	}()
	go func() { // engine -> caller
		defer func() { done <- struct{}{} }()
		key := []byte(`"delta":"`)
		marks := 0
		for {
			_, event, err := rt.ReadMessage()
			if err != nil {
				return
			}
			switch {
			case bytes.Contains(event, []byte(`"response.output_audio.delta"`)):
				i := bytes.Index(event, key)
				if i < 0 {
					continue
				}
				delta := event[i+len(key):]
				delta = delta[:max(bytes.IndexByte(delta, '"'), 0)]
				media := append([]byte(`{"event":"media","streamSid":"`+streamSid+`","media":{"payload":"`), delta...)
				write(&twMu, tw, append(media, `"}}`...))
				marks++
				write(&twMu, tw, []byte(`{"event":"mark","streamSid":"`+streamSid+`","mark":{"name":"m`+strconv.Itoa(marks)+`"}}`))
			case bytes.Contains(event, []byte(`"input_audio_buffer.speech_started"`)):
				write(&twMu, tw, []byte(`{"event":"clear","streamSid":"`+streamSid+`"}`))
			}
		}
	}()
	<-done
}
