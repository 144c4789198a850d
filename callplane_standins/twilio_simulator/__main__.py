"""``python -m callplane_standins.twilio_simulator``: the Twilio simulator as a program."""

from callplane_standins.twilio_simulator.simulator import main

main()
