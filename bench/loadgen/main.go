// Command loadgen is the compiled half of callplane's media relay benchmark (bench/relay.py).
//
// The Python harness put the simulated Twilio and the load engine on one core and saturated it
// near 150 calls, below the 500 calls per core the bridge is meant to hold. This program plays
// the same two parts with a fraction of the CPU:
//
//	loadgen engine PORT                  a Realtime (GA) server that behaves like callplane's
//	                                     local engine in --mode load with its load probe
//	loadgen twilio CONFIG.json OUT.json  N Twilio media streams against the bridge
//	loadgen noop PORT ENGINE_URL         a bridge that relays and does nothing else, for the
//	                                     harness's own ceiling
//
// Both speak exactly the wire format of their Python counterparts (callplane_standins/realtime_engine and
// bench/relay.py): the same events, the same stamps in the audio, the same probe records, so
// bench/relay.py analyses either harness with the same code.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen engine PORT | loadgen twilio CONFIG.json OUT.json | loadgen noop PORT ENGINE_URL")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	switch os.Args[1] {
	case "engine":
		if err := runEngine(parsePort("engine", os.Args[2])); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen engine:", err)
			os.Exit(1)
		}
	case "twilio":
		if len(os.Args) != 4 {
			usage()
		}
		if err := runTwilio(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen twilio:", err)
			os.Exit(1)
		}
	case "noop":
		if len(os.Args) != 4 {
			usage()
		}
		if err := runNoop(parsePort("noop", os.Args[2]), os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen noop:", err)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func parsePort(command, text string) int {
	port, err := strconv.Atoi(text)
	if err != nil || port < 0 || port > 65535 {
		fmt.Fprintf(os.Stderr, "loadgen %s: PORT %q is not a port number (0-65535)\n", command, text)
		os.Exit(2)
	}
	return port
}
