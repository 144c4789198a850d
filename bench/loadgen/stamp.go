package main

import (
	"encoding/binary"
	"syscall"
	"time"
	"unsafe"
)

// A stamp is 4 marker bytes and 16 bytes of data (stream id, sequence number, CLOCK_MONOTONIC
// nanoseconds, big-endian) written as 32 nibbles, each nibble as a µ-law code 0xF0+n of the
// lowest segment, so a stamped silent frame stays silent for a VAD. The format is
// callplane_standins/realtime_engine/context.py's (encode_stamp, decode_stamp); tests/bench checks both
// ends read each other.
var stampMarker = [4]byte{0x7a, 0x75, 0x7a, 0x75}

const (
	stampBytes      = 4 + 32
	stampFrameBytes = 160
)

func encodeStamp(dst []byte, stream uint32, seq uint32, tNs int64) {
	copy(dst, stampMarker[:])
	var raw [16]byte
	binary.BigEndian.PutUint32(raw[0:], stream)
	binary.BigEndian.PutUint32(raw[4:], seq)
	binary.BigEndian.PutUint64(raw[8:], uint64(tNs))
	for i, b := range raw {
		dst[4+2*i] = 0xF0 | b>>4
		dst[4+2*i+1] = 0xF0 | b&0x0F
	}
}

func decodeStamp(src []byte) (stream uint32, seq uint32, tNs int64, ok bool) {
	if len(src) < stampBytes || [4]byte(src[:4]) != stampMarker {
		return 0, 0, 0, false
	}
	var raw [16]byte
	for i := range raw {
		hi, lo := src[4+2*i], src[4+2*i+1]
		if hi&0xF0 != 0xF0 || lo&0xF0 != 0xF0 {
			return 0, 0, 0, false
		}
		raw[i] = (hi&0x0F)<<4 | lo&0x0F
	}
	return binary.BigEndian.Uint32(raw[0:]), binary.BigEndian.Uint32(raw[4:]),
		int64(binary.BigEndian.Uint64(raw[8:])), true
}

// monoNs is CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so a
// stamp written here is comparable with Python's time.monotonic_ns() in another process.
// Go's own monotonic reading is relative to process start, so the offset is taken once from
// the system call, and each reading after that goes through the runtime's vDSO clock.
var (
	monoBase   = time.Now()
	monoOffset = clockMonotonic()
)

func clockMonotonic() int64 {
	var ts syscall.Timespec
	const clockMonotonicID = 1
	_, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonicID, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		panic("clock_gettime(CLOCK_MONOTONIC): " + errno.Error())
	}
	return ts.Nano()
}

func monoNs() int64 {
	return monoOffset + int64(time.Since(monoBase))
}
