package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// The simulated Twilio: N media streams, each authenticated as Twilio's are (a signed upgrade
// and an edge-minted stream token, both made by bench/relay.py and passed in the config), each
// sending 20 ms µ-law frames on an absolute schedule and playing the bridge's audio back the
// way Twilio does (marks echoed when the audio before them has played, at once on clear).
// bench/relay.py's docstring describes the load; this is its compiled twin.
//
// The congestion case (stall_every > 0): every stall_every-th stream stops reading its socket
// for stall_for_s, stall_after_s into the sending phase, with a small receive buffer, so that
// the bridge's socket to it congests; what it then receives shows whether the bridge lost,
// duplicated or reordered anything while its writes were paused.

type twilioConfig struct {
	AccountSid  string         `json:"account_sid"`
	Streams     []streamConfig `json:"streams"`
	Seconds     float64        `json:"seconds"`
	Slots       int            `json:"slots"`
	CycleTicks  int            `json:"cycle_ticks"`
	SpeechTicks int            `json:"speech_ticks"`
	PhaseStep   int            `json:"phase_step"`
	SettleS     float64        `json:"settle_s"`
	DrainS      float64        `json:"drain_s"` // after sending, for frames in flight (0: settle_s)
	Parallel    int            `json:"connect_parallel"`
	StallEvery  int            `json:"stall_every"`       // 0: no stream stalls
	StallAfterS float64        `json:"stall_after_s"`     // into the sending phase
	StallForS   float64        `json:"stall_for_s"`       // how long a stalled stream reads nothing
	StallRcvBuf int            `json:"stall_read_buffer"` // SO_RCVBUF of a stalling stream (0: the kernel's)
}

// Each stream has its own URL (the media URL plus its token's key) and Twilio's signature
// over it, as the edge's TwiML and Twilio make them.
type streamConfig struct {
	CallSid   string `json:"call_sid"`
	StreamSid string `json:"stream_sid"`
	Token     string `json:"token"`
	URL       string `json:"url"`
	Signature string `json:"signature"`
}

type streamResult struct {
	Index     int     `json:"index"`
	Sent      int     `json:"sent"`
	OutUnique int     `json:"out_unique"`
	ClearsNs  []int64 `json:"clears_ns"`
}

type twilioResult struct {
	SetupS       float64        `json:"setup_s"`
	WallS        float64        `json:"wall_s"`
	ClosedEarly  int            `json:"closed_early"`
	OutMs        []float64      `json:"out_ms"`
	OutSetupMs   []float64      `json:"out_setup_ms"`
	LagMs        []float64      `json:"lag_ms"`
	OutReceived  int            `json:"out_received"`
	OutDup       int            `json:"out_dup"`
	OutReordered int            `json:"out_reordered"`
	Errors       map[string]int `json:"errors"`
	Streams      []streamResult `json:"streams"`
	Stalled      int            `json:"stalled"` // streams that stopped reading for stall_for_s
}

const tick = 20 * time.Millisecond

// windowStartNs is when the sending phase starts (CLOCK_MONOTONIC). Outbound latency counts
// only chunks the engine stamped from then on, as inbound counts only frames sent from then
// on: the greetings of all N calls answered within the setup second are a burst no steady
// state has. Until the phase starts it is the largest int64, so nothing counts.
var windowStartNs atomic.Int64

func init() { windowStartNs.Store(math.MaxInt64) }

// stallAtNs is when stalling streams stop reading (CLOCK_MONOTONIC); the largest int64 until
// the sending phase starts.
var stallAtNs atomic.Int64

func init() { stallAtNs.Store(math.MaxInt64) }

var (
	silentFrame = bytes.Repeat([]byte{0xff}, stampFrameBytes)
	loudFrame   = bytes.Repeat([]byte{0x80, 0x00}, stampFrameBytes/2) // full-scale square wave
)

type twilioStream struct {
	index int
	cfg   streamConfig
	conn  *websocket.Conn
	wmu   sync.Mutex
	phase int
	sent  int

	stallFor time.Duration // > 0: this stream stops reading once, at stallAtNs, for this long
	stalled  bool          // reader goroutine only: the stall has happened

	closed   bool // set by the reader when the socket ends
	closeMu  sync.Mutex
	readDone chan struct{} // closed when the reader has stopped touching its records

	// reader goroutine only
	outMs        []float64
	outSetupMs   []float64
	seen         []bool
	outMax       int
	outDup       int
	outReordered int
	errors       map[string]int

	pmu        sync.Mutex // playback state, shared with mark timers
	playoutEnd time.Time
	marks      []pendingMark
	clearsNs   []int64
}

type pendingMark struct {
	timer *time.Timer
	name  string
}

func (t *twilioStream) write(msg []byte) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.conn.WriteMessage(websocket.TextMessage, msg) // a dead socket shows in the reader
}

func (t *twilioStream) isClosed() bool {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	return t.closed
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (t *twilioStream) sendStart(accountSid string) {
	t.write([]byte(`{"event":"connected","protocol":"Call","version":"1.0.0"}`))
	t.write(mustJSON(map[string]any{
		"event": "start", "sequenceNumber": "1", "streamSid": t.cfg.StreamSid,
		"start": map[string]any{
			"streamSid": t.cfg.StreamSid, "accountSid": accountSid, "callSid": t.cfg.CallSid,
			"tracks":           []string{"inbound"},
			"customParameters": map[string]string{"token": t.cfg.Token, "from": "+14155550100"},
			"mediaFormat":      map[string]any{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
		},
	}))
}

// sendFrame is the generator's hot path: one stamped 20 ms frame in Twilio's media shape.
func (t *twilioStream) sendFrame(tk int, cfg *twilioConfig, audio []byte, msg []byte) []byte {
	seq := t.sent
	base := silentFrame
	if (tk+t.phase)%cfg.CycleTicks < cfg.SpeechTicks {
		base = loudFrame
	}
	copy(audio, base)
	encodeStamp(audio, uint32(t.index), uint32(seq), monoNs())
	n := strconv.Itoa(seq + 2)
	msg = append(msg[:0], `{"event":"media","sequenceNumber":"`...)
	msg = append(msg, n...)
	msg = append(msg, `","media":{"track":"inbound","chunk":"`...)
	msg = append(msg, n...)
	msg = append(msg, `","timestamp":"`...)
	msg = strconv.AppendInt(msg, int64(seq*20), 10)
	msg = append(msg, `","payload":"`...)
	msg = base64.StdEncoding.AppendEncode(msg, audio)
	msg = append(msg, `"},"streamSid":"`...)
	msg = append(msg, t.cfg.StreamSid...)
	msg = append(msg, `"}`...)
	t.write(msg)
	t.sent++
	return msg
}

func (t *twilioStream) read() {
	defer close(t.readDone)
	payloadKey := []byte(`"payload":"`)
	for {
		kind, msg, err := t.conn.ReadMessage()
		if err != nil {
			t.closeMu.Lock()
			t.closed = true
			t.closeMu.Unlock()
			return
		}
		if t.stallFor > 0 && !t.stalled && monoNs() >= stallAtNs.Load() {
			// A slow reader: nothing is read for a while, so the bridge's writes back up.
			t.stalled = true
			time.Sleep(t.stallFor)
		}
		now := time.Now()
		nowNs := monoNs()
		if kind != websocket.TextMessage {
			t.errors["binary_frame"]++
			continue
		}
		// Media frames are most of the traffic: their payload is cut out without a parser.
		if bytes.HasPrefix(msg, []byte(`{"event":"media"`)) {
			i := bytes.Index(msg, payloadKey)
			if i < 0 {
				t.errors["media_without_payload"]++
				continue
			}
			payload := msg[i+len(payloadKey):]
			payload = payload[:max(bytes.IndexByte(payload, '"'), 0)]
			t.onMedia(payload, now, nowNs)
			continue
		}
		var event struct {
			Event string `json:"event"`
			Mark  struct {
				Name string `json:"name"`
			} `json:"mark"`
			Media struct {
				Payload string `json:"payload"`
			} `json:"media"`
		}
		if err := json.Unmarshal(msg, &event); err != nil {
			t.errors["invalid_json"]++
			continue
		}
		switch event.Event {
		case "media":
			t.onMedia([]byte(event.Media.Payload), now, nowNs)
		case "mark":
			t.pmu.Lock()
			t.marks = append(t.marks, pendingMark{time.AfterFunc(t.playoutEnd.Sub(now), t.echoMark), event.Mark.Name})
			t.pmu.Unlock()
		case "clear":
			t.pmu.Lock()
			t.clearsNs = append(t.clearsNs, nowNs)
			pending := t.marks
			t.marks = nil
			t.playoutEnd = now
			t.pmu.Unlock()
			for _, m := range pending { // Twilio echoes the marks of cleared audio at once
				m.timer.Stop()
				t.writeMark(m.name)
			}
		default:
			t.errors["unexpected_"+event.Event]++
		}
	}
}

func (t *twilioStream) onMedia(payload []byte, now time.Time, nowNs int64) {
	nbytes := len(payload) * 3 / 4
	if len(payload) > 0 && payload[len(payload)-1] == '=' {
		nbytes--
		if len(payload) > 1 && payload[len(payload)-2] == '=' {
			nbytes--
		}
	}
	var head [stampBytes]byte
	if len(payload) >= 48 { // 48 base64 characters are exactly the 36 bytes of a stamp
		if _, err := base64.StdEncoding.Decode(head[:], payload[:48]); err == nil {
			if _, seq, sent, ok := decodeStamp(head[:]); ok {
				if sent >= windowStartNs.Load() { // the steady state, as inbound
					t.outMs = append(t.outMs, float64(nowNs-sent)/1e6)
				} else { // the greetings, while the calls were being set up
					t.outSetupMs = append(t.outSetupMs, float64(nowNs-sent)/1e6)
				}
				s := int(seq)
				for len(t.seen) <= s {
					t.seen = append(t.seen, false)
				}
				if t.seen[s] {
					t.outDup++
				} else {
					if s < t.outMax {
						t.outReordered++
					}
					t.seen[s] = true
					t.outMax = max(t.outMax, s)
				}
			}
		}
	}
	t.pmu.Lock()
	if t.playoutEnd.Before(now) {
		t.playoutEnd = now
	}
	t.playoutEnd = t.playoutEnd.Add(time.Duration(nbytes) * time.Second / 8000)
	t.pmu.Unlock()
}

func (t *twilioStream) echoMark() {
	t.pmu.Lock()
	if len(t.marks) == 0 {
		t.pmu.Unlock()
		return
	}
	name := t.marks[0].name
	t.marks = t.marks[1:]
	t.pmu.Unlock()
	t.writeMark(name)
}

func (t *twilioStream) writeMark(name string) {
	if !t.isClosed() {
		t.write(mustJSON(map[string]any{"event": "mark", "streamSid": t.cfg.StreamSid, "mark": map[string]string{"name": name}}))
	}
}

func runTwilio(configPath, outPath string) error {
	raw, err := os.ReadFile(configPath)
	if err != nil {
		return err
	}
	var cfg twilioConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	if cfg.Slots < 1 || cfg.CycleTicks < 1 || cfg.Seconds <= 0 || cfg.Parallel < 1 {
		return fmt.Errorf("%s: slots, cycle_ticks, connect_parallel and seconds must be positive", configPath)
	}
	streams := make([]*twilioStream, len(cfg.Streams))
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 8192, WriteBufferSize: 8192}
	t0 := time.Now()
	gate := make(chan struct{}, cfg.Parallel)
	errs := make(chan error, len(streams))
	var wg sync.WaitGroup
	for i, sc := range cfg.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate <- struct{}{}
			defer func() { <-gate }()
			header := http.Header{"X-Twilio-Signature": {sc.Signature}}
			conn, resp, err := dialer.Dial(sc.URL, header)
			if err != nil {
				status := ""
				if resp != nil {
					status = " (" + resp.Status + ")"
				}
				errs <- fmt.Errorf("stream %d: upgrade: %w%s", i, err, status)
				return
			}
			t := &twilioStream{index: i, cfg: sc, conn: conn, phase: (i * cfg.PhaseStep) % cfg.CycleTicks,
				outMax: -1, errors: map[string]int{}, readDone: make(chan struct{})}
			if cfg.StallEvery > 0 && i%cfg.StallEvery == 0 {
				t.stallFor = time.Duration(cfg.StallForS * float64(time.Second))
				if tcp, ok := conn.UnderlyingConn().(*net.TCPConn); ok && cfg.StallRcvBuf > 0 {
					_ = tcp.SetReadBuffer(cfg.StallRcvBuf)
				}
			}
			streams[i] = t
			go t.read()
			t.sendStart(cfg.AccountSid)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	setup := time.Since(t0).Seconds()
	fmt.Printf("connected %.3f\n", setup)
	time.Sleep(time.Duration(cfg.SettleS * float64(time.Second))) // sessions configured, greetings under way

	ticks := int(cfg.Seconds / tick.Seconds())
	start := time.Now().Add(50 * time.Millisecond)
	windowStartNs.Store(monoNs() + int64(50*time.Millisecond))
	stallAtNs.Store(monoNs() + int64(50*time.Millisecond) + int64(cfg.StallAfterS*float64(time.Second)))
	fmt.Println("sending")
	lags := make([][]float64, cfg.Slots)
	var send sync.WaitGroup
	for g := range cfg.Slots {
		send.Add(1)
		go func() {
			defer send.Done()
			audio := make([]byte, stampFrameBytes)
			msg := make([]byte, 0, 512)
			for tk := range ticks {
				target := start.Add(time.Duration(tk)*tick + time.Duration(g)*tick/time.Duration(cfg.Slots))
				time.Sleep(time.Until(target))
				lags[g] = append(lags[g], float64(time.Since(target))/1e6)
				for i := g; i < len(streams); i += cfg.Slots {
					if t := streams[i]; !t.isClosed() {
						msg = t.sendFrame(tk, &cfg, audio, msg)
					}
				}
			}
		}()
	}
	send.Wait()
	wall := time.Since(start).Seconds()
	fmt.Println("sent")
	drain := cfg.DrainS
	if drain <= 0 {
		drain = cfg.SettleS
	}
	time.Sleep(time.Duration(drain * float64(time.Second))) // let frames in flight land

	result := twilioResult{SetupS: setup, WallS: wall, Errors: map[string]int{}, OutMs: []float64{}, OutSetupMs: []float64{}, LagMs: []float64{}}
	for _, t := range streams {
		if t.isClosed() {
			result.ClosedEarly++
		}
	}
	for _, t := range streams {
		if !t.isClosed() {
			t.write(mustJSON(map[string]any{"event": "stop", "streamSid": t.cfg.StreamSid, "stop": map[string]string{"callSid": t.cfg.CallSid}}))
		}
	}
	time.Sleep(500 * time.Millisecond)
	for _, t := range streams {
		t.wmu.Lock()
		_ = t.conn.Close()
		t.wmu.Unlock()
	}
	for _, t := range streams {
		<-t.readDone
		t.pmu.Lock()
		for _, m := range t.marks {
			m.timer.Stop()
		}
		clears := append([]int64{}, t.clearsNs...)
		t.pmu.Unlock()
		unique := 0
		for _, s := range t.seen {
			if s {
				unique++
			}
		}
		result.OutMs = append(result.OutMs, t.outMs...)
		result.OutSetupMs = append(result.OutSetupMs, t.outSetupMs...)
		result.OutReceived += len(t.outMs) + len(t.outSetupMs)
		result.OutDup += t.outDup
		result.OutReordered += t.outReordered
		for k, v := range t.errors {
			result.Errors[k] += v
		}
		result.Streams = append(result.Streams, streamResult{Index: t.index, Sent: t.sent, OutUnique: unique, ClearsNs: clears})
		if t.stalled {
			result.Stalled++
		}
	}
	for _, l := range lags {
		result.LagMs = append(result.LagMs, l...)
	}
	if err := os.WriteFile(outPath, mustJSON(result), 0o644); err != nil {
		return err
	}
	fmt.Println("done")
	return nil
}
