package main

import "math"

// G.711 µ-law, the standard segment coding (ITU-T G.711). Hand-written because it is eight
// lines and the Go standard library has no telephony codecs; the load engine needs only to
// measure the energy of incoming frames and to encode its one reply clip.

var ulawToLinear = func() (t [256]int16) {
	for code := range 256 {
		u := ^uint8(code)
		v := (int32(u&0x0F) << 3) + 0x84
		v <<= (u & 0x70) >> 4
		if u&0x80 != 0 {
			t[code] = int16(0x84 - v)
		} else {
			t[code] = int16(v - 0x84)
		}
	}
	return t
}()

func ulawEncode(sample int16) byte {
	const bias, clip = 0x84, 32635
	v := int32(sample)
	sign := byte(0)
	if v < 0 {
		sign = 0x80
		v = -v
	}
	if v > clip {
		v = clip
	}
	v += bias
	exponent := byte(7)
	for mask := int32(0x4000); v&mask == 0 && exponent > 0; mask >>= 1 {
		exponent--
	}
	mantissa := byte(v>>(exponent+3)) & 0x0F
	return ^(sign | exponent<<4 | mantissa)
}

// replyClip is the load engine's reply: one second of a 440 Hz tone at -12 dBFS in µ-law at
// 8 kHz, as callplane_standins.realtime_engine.context.load_reply_clip makes it.
func replyClip() []byte {
	clip := make([]byte, 8000)
	for i := range clip {
		s := math.Sin(2*math.Pi*440*float64(i)/8000) * 0.25 * 32767
		clip[i] = ulawEncode(int16(s))
	}
	return clip
}
