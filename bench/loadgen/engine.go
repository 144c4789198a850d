package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// The load engine: what callplane's local engine does in --mode load with load_probe, on the
// wire, event for event (the order and shape of a real trace of the Python engine): server VAD
// with the GA server_vad parameters, a commit per turn, and a fixed one-second reply streamed in
// 100 ms chunks at four times real time, each chunk stamped for the probe. It speaks µ-law only
// (the Twilio path's format) and says so in an error event for any other format.

const (
	windowMs        = 20
	minSpeechMs     = 60 // as callplane_standins/realtime_engine/vad.py: a click is not a turn
	chunkMs         = 100
	pace            = 4.0
	replyTranscript = "Load test reply."
)

var replyWords = []string{"Load ", "test ", "reply."}

const idAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func newID(prefix string) string {
	b := make([]byte, len(prefix)+1+22)
	copy(b, prefix)
	b[len(prefix)] = '_'
	for i := len(prefix) + 1; i < len(b); i++ {
		b[i] = idAlphabet[rand.IntN(62)]
	}
	return string(b)
}

// probe holds what bench/relay.py reads back: the same arrays as LoadProbe.snapshot().
type probe struct {
	mu       sync.Mutex
	inStream []int64
	inSeq    []int64
	inSent   []int64
	inRecv   []int64
	ssStream []int64
	ssSent   []int64
	sessions []*session
}

func (p *probe) snapshot() map[string][]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	snap := map[string][]int64{
		"in_stream": p.inStream, "in_seq": p.inSeq, "in_sent_ns": p.inSent,
		"in_recv_ns": p.inRecv, "ss_stream": p.ssStream, "ss_sent_ns": p.ssSent,
		"out_stream": {}, "out_sent": {},
	}
	// Output chunks count for the stream a session ended up naming, as LoadProbe does: a
	// greeting goes out before the first stamped input tells the session its stream.
	outSent := map[int64]int64{}
	for _, s := range p.sessions {
		outSent[s.stream.Load()] += int64(s.outSeq.Load())
	}
	for stream, n := range outSent {
		snap["out_stream"] = append(snap["out_stream"], stream)
		snap["out_sent"] = append(snap["out_sent"], n)
	}
	return snap
}

type engine struct {
	probe probe
	clip  []byte
}

func runEngine(port int) error {
	e := &engine{clip: replyClip()}
	upgrader := websocket.Upgrader{ReadBufferSize: 8192, WriteBufferSize: 8192}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/realtime", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			http.Error(w, "missing Authorization: Bearer <key>", http.StatusUnauthorized)
			return
		}
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // the upgrader has answered with the reason
		}
		s := newSession(e, conn)
		s.run()
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	// Commands on stdin, as bench/relay_engine.py: "dump PATH" writes the probe; EOF stops.
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		command, arg, _ := strings.Cut(strings.TrimSpace(in.Text()), " ")
		if command != "dump" {
			fmt.Fprintf(os.Stderr, "loadgen engine: unknown command %q (expected: dump PATH)\n", command)
			continue
		}
		text, err := json.Marshal(e.probe.snapshot())
		if err == nil {
			err = os.WriteFile(arg, text, 0o644)
		}
		if err != nil {
			return fmt.Errorf("dump %s: %w", arg, err)
		}
		fmt.Println("ok")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

type response struct {
	id     string
	itemID string
	cancel chan string // the reason; buffered, written once
	done   chan struct{}
}

type session struct {
	e    *engine
	conn *websocket.Conn
	wmu  sync.Mutex // one writer at a time (gorilla's rule)

	mu           sync.Mutex // guards what the reader and a response goroutine share
	config       map[string]any
	conversation string
	lastItem     string
	resp         *response

	// input side: only the reader goroutine touches these
	stream      atomic.Int64 // the stream id the stamps name, -1 until the first
	pending     []byte
	windowsDone int
	speaking    bool
	speechRun   int
	silenceRun  int
	levelSq     float64
	prefixMs    int
	silenceMs   int
	createResp  bool
	interrupt   bool
	pendingItem string
	outSeq      atomic.Uint32 // stamped output chunks sent
}

func newSession(e *engine, conn *websocket.Conn) *session {
	s := &session{e: e, conn: conn, conversation: newID("conv"), config: defaultSession()}
	s.stream.Store(-1)
	s.configureInput()
	e.probe.mu.Lock()
	e.probe.sessions = append(e.probe.sessions, s)
	e.probe.mu.Unlock()
	return s
}

func defaultSession() map[string]any {
	var m map[string]any
	_ = json.Unmarshal([]byte(`{"type":"realtime","model":"gpt-realtime","output_modalities":["audio"],
	"instructions":"You are callplane's load engine.","tools":[],"tool_choice":"auto",
	"max_output_tokens":"inf","tracing":null,"truncation":"auto","prompt":null,"include":null,
	"audio":{"input":{"format":{"type":"audio/pcmu"},"transcription":null,"noise_reduction":null,
	"turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,
	"silence_duration_ms":500,"idle_timeout_ms":null,"create_response":true,"interrupt_response":true}},
	"output":{"format":{"type":"audio/pcmu"},"voice":"marin","speed":1.0}}}`), &m)
	return m
}

// merge applies a session.update the way the GA API does: objects merge, anything else replaces.
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sub, ok := v.(map[string]any); ok {
			if cur, ok := dst[k].(map[string]any); ok {
				merge(cur, sub)
				continue
			}
		}
		dst[k] = v
	}
}

func dig(m map[string]any, path ...string) any {
	var cur any = m
	for _, k := range path {
		next, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = next[k]
	}
	return cur
}

func (s *session) configureInput() {
	td, _ := dig(s.config, "audio", "input", "turn_detection").(map[string]any)
	num := func(key string, def float64) float64 {
		if v, ok := td[key].(float64); ok {
			return v
		}
		return def
	}
	flag := func(key string) bool {
		v, ok := td[key].(bool)
		return !ok || v
	}
	threshold := math.Min(math.Max(num("threshold", 0.5), 0), 1)
	level := math.Pow(10, (-55+40*threshold)/20) * 32768
	s.levelSq = level * level
	s.prefixMs = int(num("prefix_padding_ms", 300))
	s.silenceMs = int(num("silence_duration_ms", 500))
	s.createResp = td != nil && flag("create_response")
	s.interrupt = td != nil && flag("interrupt_response")
}

func (s *session) send(event map[string]any) {
	event["event_id"] = newID("event")
	text, err := json.Marshal(event)
	if err != nil {
		panic(err) // every event here is built from JSON-safe values
	}
	s.sendRaw(text)
}

func (s *session) sendRaw(text []byte) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.WriteMessage(websocket.TextMessage, text) // a closed socket ends the reader
}

func (s *session) fail(code, message, param string) {
	e := map[string]any{"type": "invalid_request_error", "code": code, "message": message,
		"param": nil, "event_id": nil}
	if param != "" {
		e["param"] = param
	}
	s.send(map[string]any{"type": "error", "error": e})
}

func (s *session) run() {
	defer s.conn.Close()
	s.mu.Lock()
	created := map[string]any{"type": "session.created", "session": s.config}
	s.send(created)
	s.mu.Unlock()
	appendPrefix := []byte(`{"type":"input_audio_buffer.append","audio":"`)
	for {
		kind, msg, err := s.conn.ReadMessage()
		if err != nil {
			s.cancelResponse("client_cancelled")
			return
		}
		if kind != websocket.TextMessage {
			s.fail("invalid_frame", fmt.Sprintf("Binary frames are not supported (%d bytes received); send JSON events as text frames.", len(msg)), "")
			continue
		}
		// The hot path: the compact append callplane's client sends, without a JSON parser.
		if bytes.HasPrefix(msg, appendPrefix) && bytes.HasSuffix(msg, []byte(`"}`)) &&
			bytes.IndexByte(msg[len(appendPrefix):len(msg)-2], '"') < 0 {
			s.appendAudio(msg[len(appendPrefix) : len(msg)-2])
			continue
		}
		var event map[string]any
		if err := json.Unmarshal(msg, &event); err != nil {
			s.fail("invalid_json", "We could not parse the JSON body of your request: "+err.Error(), "")
			continue
		}
		s.dispatch(event)
	}
}

func (s *session) dispatch(event map[string]any) {
	etype, _ := event["type"].(string)
	switch etype {
	case "input_audio_buffer.append":
		audio, ok := event["audio"].(string)
		if !ok {
			s.fail("missing_required_parameter", "Missing required parameter: 'audio' (a base64 string).", "audio")
			return
		}
		s.appendAudio([]byte(audio))
	case "session.update":
		update, ok := event["session"].(map[string]any)
		if !ok {
			s.fail("missing_required_parameter", "Missing required parameter: 'session'.", "session")
			return
		}
		for _, path := range [][]string{{"audio", "input", "format", "type"}, {"audio", "output", "format", "type"}} {
			if f, ok := dig(update, path...).(string); ok && f != "audio/pcmu" {
				s.fail("unsupported_format", fmt.Sprintf("The load engine speaks audio/pcmu only, not %q.", f), strings.Join(path[:3], "."))
				return
			}
		}
		s.mu.Lock()
		merge(s.config, update)
		s.configureInput()
		updated := map[string]any{"type": "session.updated", "session": s.config}
		s.send(updated)
		s.mu.Unlock()
	case "response.create":
		s.startResponse()
	case "response.cancel":
		if !s.cancelResponse("client_cancelled") {
			s.fail("response_cancel_not_active", "Cancellation failed: no active response found.", "")
		}
	case "conversation.item.truncate":
		s.send(map[string]any{"type": "conversation.item.truncated", "item_id": event["item_id"],
			"content_index": event["content_index"], "audio_end_ms": event["audio_end_ms"]})
	case "conversation.item.create":
		item, _ := event["item"].(map[string]any)
		if item == nil {
			s.fail("missing_required_parameter", "Missing required parameter: 'item'.", "item")
			return
		}
		if _, ok := item["id"].(string); !ok {
			item["id"] = newID("item")
		}
		item["object"] = "realtime.item"
		item["status"] = "completed"
		s.mu.Lock()
		previous := s.previous(item["id"].(string))
		s.mu.Unlock()
		s.send(map[string]any{"type": "conversation.item.added", "previous_item_id": previous, "item": item})
		s.send(map[string]any{"type": "conversation.item.done", "previous_item_id": previous, "item": item})
	default:
		s.fail("invalid_value", fmt.Sprintf("Invalid value: %q. The load engine supports session.update, input_audio_buffer.append, conversation.item.create, conversation.item.truncate, response.create and response.cancel.", etype), "type")
	}
}

// previous returns the last item's id (nil for the first) and makes id the last. Under s.mu.
func (s *session) previous(id string) any {
	var prev any
	if s.lastItem != "" {
		prev = s.lastItem
	}
	s.lastItem = id
	return prev
}

func (s *session) appendAudio(b64 []byte) {
	now := monoNs()
	data := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(data, b64)
	if err != nil {
		s.fail("invalid_value", "Invalid 'audio'. Expected base64-encoded audio data.", "audio")
		return
	}
	data = data[:n]
	p := &s.e.probe
	for off := 0; off+stampBytes <= len(data); off += stampFrameBytes {
		stream, seq, sent, ok := decodeStamp(data[off:])
		if !ok {
			continue
		}
		s.stream.Store(int64(stream))
		p.mu.Lock()
		p.inStream = append(p.inStream, int64(stream))
		p.inSeq = append(p.inSeq, int64(seq))
		p.inSent = append(p.inSent, sent)
		p.inRecv = append(p.inRecv, now)
		p.mu.Unlock()
	}
	s.vad(data)
}

// vad is callplane_standins/realtime_engine/vad.py's EnergyVad over 20 ms windows of µ-law.
func (s *session) vad(data []byte) {
	const window = 8000 * windowMs / 1000
	buf := data
	if len(s.pending) > 0 {
		buf = append(s.pending, data...)
	}
	n := len(buf) / window
	for w := range n {
		energy := 0.0
		for _, code := range buf[w*window : (w+1)*window] {
			v := float64(ulawToLinear[code])
			energy += v * v
		}
		s.windowsDone++
		s.step(energy >= s.levelSq*window)
	}
	s.pending = append(s.pending[:0], buf[n*window:]...)
}

func (s *session) step(isSpeech bool) {
	nowMs := s.windowsDone * windowMs
	if !s.speaking {
		if isSpeech {
			s.speechRun++
		} else {
			s.speechRun = 0
		}
		if s.speechRun*windowMs >= minSpeechMs {
			s.speaking = true
			s.silenceRun = 0
			s.speechStarted(max(0, nowMs-s.speechRun*windowMs-s.prefixMs))
		}
		return
	}
	if isSpeech {
		s.silenceRun = 0
	} else {
		s.silenceRun++
	}
	if s.silenceRun*windowMs >= s.silenceMs {
		s.speaking = false
		s.speechRun = 0
		s.speechStopped(nowMs)
	}
}

func (s *session) speechStarted(startMs int) {
	s.pendingItem = newID("item")
	p := &s.e.probe
	p.mu.Lock()
	p.ssStream = append(p.ssStream, s.stream.Load())
	p.ssSent = append(p.ssSent, monoNs())
	p.mu.Unlock()
	s.send(map[string]any{"type": "input_audio_buffer.speech_started", "audio_start_ms": startMs,
		"item_id": s.pendingItem})
	if s.interrupt {
		s.cancelResponse("turn_detected")
	}
}

func (s *session) speechStopped(endMs int) {
	item := s.pendingItem
	if item == "" {
		item = newID("item")
	}
	s.pendingItem = ""
	s.send(map[string]any{"type": "input_audio_buffer.speech_stopped", "audio_end_ms": endMs, "item_id": item})
	s.mu.Lock()
	previous := s.previous(item)
	s.mu.Unlock()
	s.send(map[string]any{"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": previous})
	user := map[string]any{"id": item, "type": "message", "object": "realtime.item", "status": "completed",
		"role": "user", "content": []any{map[string]any{"type": "input_audio", "transcript": nil}}}
	s.send(map[string]any{"type": "conversation.item.added", "previous_item_id": previous, "item": user})
	s.send(map[string]any{"type": "conversation.item.done", "previous_item_id": previous, "item": user})
	if s.createResp {
		s.startResponse()
	}
}

// cancelResponse stops the response in flight, if any, and waits until it has said so.
func (s *session) cancelResponse(reason string) bool {
	s.mu.Lock()
	r := s.resp
	s.mu.Unlock()
	if r == nil {
		return false
	}
	select {
	case r.cancel <- reason:
	default:
	}
	<-r.done
	return true
}

func (s *session) startResponse() {
	s.mu.Lock()
	if s.resp != nil {
		id := s.resp.id
		s.mu.Unlock()
		s.fail("conversation_already_has_active_response",
			"Conversation already has an active response in progress: "+id+". Wait until the response is finished before creating a new one.", "")
		return
	}
	r := &response{id: newID("resp"), itemID: newID("item"), cancel: make(chan string, 1), done: make(chan struct{})}
	s.resp = r
	previous := s.previous(r.itemID)
	s.mu.Unlock()
	go s.play(r, previous)
}

func (s *session) responseObject(r *response, status string, details any, output []any, usage any) map[string]any {
	return map[string]any{"id": r.id, "object": "realtime.response", "status": status,
		"status_details": details, "output": output, "conversation_id": s.conversation,
		"output_modalities": []any{"audio"}, "max_output_tokens": "inf",
		"audio":    map[string]any{"output": map[string]any{"format": map[string]any{"type": "audio/pcmu"}, "voice": "marin"}},
		"metadata": nil, "usage": usage}
}

func usageObject(outMs int, transcript string) map[string]any {
	textOut := (len(transcript) + 3) / 4
	audioOut := int(float64(outMs)*20/1000 + 0.999)
	return map[string]any{"total_tokens": textOut + audioOut, "input_tokens": 0, "output_tokens": textOut + audioOut,
		"input_token_details": map[string]any{"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0,
			"cached_tokens_details": map[string]any{"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
		"output_token_details": map[string]any{"text_tokens": textOut, "audio_tokens": audioOut}}
}

// play streams one response; it is the response's goroutine.
func (s *session) play(r *response, previous any) {
	defer close(r.done)
	item := func(status string, transcript *string) map[string]any {
		content := []any{}
		if transcript != nil {
			content = append(content, map[string]any{"type": "output_audio", "transcript": *transcript})
		}
		return map[string]any{"id": r.itemID, "type": "message", "object": "realtime.item",
			"status": status, "role": "assistant", "content": content}
	}
	ids := func(event map[string]any) map[string]any {
		event["response_id"] = r.id
		event["item_id"] = r.itemID
		event["output_index"] = 0
		event["content_index"] = 0
		return event
	}
	s.send(map[string]any{"type": "response.created", "response": s.responseObject(r, "in_progress", nil, []any{}, nil)})
	s.send(map[string]any{"type": "response.output_item.added", "response_id": r.id, "output_index": 0, "item": item("in_progress", nil)})
	s.send(map[string]any{"type": "conversation.item.added", "previous_item_id": previous, "item": item("in_progress", nil)})
	s.send(ids(map[string]any{"type": "response.content_part.added", "part": map[string]any{"type": "audio", "transcript": ""}}))

	chunk := 8000 * chunkMs / 1000
	spoken, words := "", 0
	produced := 0
	reason := ""
	deltaHead := []byte(`{"type":"response.output_audio.delta","response_id":"` + r.id + `","item_id":"` + r.itemID +
		`","output_index":0,"content_index":0,"delta":"`)
	piece := make([]byte, chunk)
	for start := 0; start < len(s.e.clip) && reason == ""; start += chunk {
		end := min(start+chunk, len(s.e.clip))
		produced = end
		due := int(math.Ceil(float64(len(replyWords)*produced) / float64(len(s.e.clip))))
		if due > words {
			delta := strings.Join(replyWords[words:due], "")
			words = due
			spoken += delta
			s.send(ids(map[string]any{"type": "response.output_audio_transcript.delta", "delta": delta}))
		}
		n := copy(piece, s.e.clip[start:end])
		if n >= stampBytes {
			stream := max(s.stream.Load(), 0)
			encodeStamp(piece, uint32(stream), s.outSeq.Load(), monoNs())
			s.outSeq.Add(1)
		}
		// Built by hand: this is the per-chunk path, and the event is a fixed shape.
		msg := make([]byte, 0, len(deltaHead)+base64.StdEncoding.EncodedLen(n)+64)
		msg = append(msg, deltaHead...)
		msg = base64.StdEncoding.AppendEncode(msg, piece[:n])
		msg = append(msg, `","event_id":"`...)
		msg = append(msg, newID("event")...)
		msg = append(msg, `"}`...)
		s.sendRaw(msg)
		timer := time.NewTimer(time.Duration(float64(n) / 8000 / pace * float64(time.Second)))
		select {
		case reason = <-r.cancel:
			timer.Stop()
		case <-timer.C:
		}
	}
	if reason == "" {
		select { // a cancel that raced the last chunk still ends the response as cancelled
		case reason = <-r.cancel:
		default:
		}
	}
	status, itemStatus := "completed", "completed"
	var details any
	if reason != "" {
		status, itemStatus = "cancelled", "incomplete"
		details = map[string]any{"type": "cancelled", "reason": reason}
	} else {
		spoken = replyTranscript
	}
	s.send(ids(map[string]any{"type": "response.output_audio.done"}))
	s.send(ids(map[string]any{"type": "response.output_audio_transcript.done", "transcript": spoken}))
	s.send(ids(map[string]any{"type": "response.content_part.done", "part": map[string]any{"type": "audio", "transcript": spoken}}))
	finished := item(itemStatus, &spoken)
	s.send(map[string]any{"type": "response.output_item.done", "response_id": r.id, "output_index": 0, "item": finished})
	s.send(map[string]any{"type": "conversation.item.done", "previous_item_id": previous, "item": finished})
	s.mu.Lock()
	s.resp = nil
	s.mu.Unlock()
	u := usageObject(produced*1000/8000, spoken)
	s.send(map[string]any{"type": "response.done", "response": s.responseObject(r, status, details, []any{finished}, u)})
	s.send(map[string]any{"type": "rate_limits.updated", "rate_limits": []any{
		map[string]any{"name": "requests", "limit": 10000, "remaining": 9999, "reset_seconds": 0.006},
		map[string]any{"name": "tokens", "limit": 2000000, "remaining": 2000000 - u["total_tokens"].(int), "reset_seconds": 0.0},
	}})
}
