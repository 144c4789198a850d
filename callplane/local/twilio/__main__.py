"""``python -m callplane.local.twilio``: the Twilio simulator as a standalone program."""

from callplane.local.twilio.simulator import main

main()
