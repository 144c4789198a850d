"""The simulator's own control routes under ``/_simulator/``: not part of Twilio's API.

A test (or ``callplane dev``) uses them to ring a number with a scripted caller, to say who
answers outbound calls to a number, to fetch a simulated call's result and to arm faults on
the Twilio routes. Callers authenticate with an account's SID and token like Twilio's own
routes; the fault routes also answer loopback clients only.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from callplane_standins.serving import is_loopback
from callplane_standins.twilio_simulator.api_input import (
    authenticate_account,
    basic_account,
    basic_header,
    not_found,
    simulator_of,
)
from callplane_standins.twilio_simulator.callee import callee_from_json
from callplane_standins.twilio_simulator.caller import CallerScriptError, script_from_json
from callplane_standins.twilio_simulator.faults import fault_from_json
from callplane_standins.twilio_simulator.state import TwilioApiError

if TYPE_CHECKING:
    from callplane_standins.twilio_simulator.simulator import Simulator

__all__ = ["SIMULATOR_ROUTES"]


async def simulate_call(request: Request) -> Response:
    """Ring a simulator number with a scripted caller (JSON: from, to, script,
    max_duration_s, wait). Authenticated as the account owning ``to``."""
    sim = simulator_of(request)
    try:
        body = await request.json()
    except ValueError:
        raise TwilioApiError(400, 20001, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise TwilioApiError(400, 20001, "the body must be a JSON object")
    to, from_ = body.get("to"), body.get("from")
    number = sim.store.find_number(to) if isinstance(to, str) else None
    if number is None or not isinstance(to, str):
        raise TwilioApiError(404, 20404, f"to {to!r} is not a number bought on this simulator")
    authenticate_account(request, number.account_sid)
    if not isinstance(from_, str):
        raise TwilioApiError(400, 21212, f"from {from_!r} must be an E.164 phone number")
    raw_script = body.get("script", [])
    if not isinstance(raw_script, list):
        raise TwilioApiError(400, 20001, "script must be a list of steps")
    try:
        script = script_from_json(raw_script)
    except CallerScriptError as exc:
        raise TwilioApiError(400, 20001, f"script: {exc}") from None
    max_duration = body.get("max_duration_s", 60)
    if isinstance(max_duration, bool) or not isinstance(max_duration, int | float):
        raise TwilioApiError(400, 20001, f"max_duration_s {max_duration!r} must be a number")
    if not 0 < max_duration <= 3600:
        raise TwilioApiError(400, 20001, f"max_duration_s {max_duration!r} must be in (0, 3600]")
    call = await sim.start_call(from_, to, script, max_duration_s=float(max_duration))
    if body.get("wait", True):
        result = await call.wait()
        return JSONResponse(result.to_json())
    return JSONResponse({"call_sid": call.call_sid, "status": call.status}, status_code=202)


async def set_callee(request: Request) -> Response:
    """Who answers outbound calls to a number (JSON: number, kind human | voicemail |
    busy | no_answer, rings, script for a person, greeting for a voicemail). Any account
    of the simulator may set it."""
    sim = simulator_of(request)
    if not any(
        hmac.compare_digest(request.headers.get("authorization", ""), basic_header(sid, token))
        for sid, token in sim.tokens.items()
    ):
        raise TwilioApiError(401, 20003, "Authenticate with an account's SID and token")
    try:
        body = await request.json()
        callee = callee_from_json(body)
        sim.set_callee(str(body["number"]), callee)
    except (ValueError, KeyError, TypeError, CallerScriptError) as exc:
        raise TwilioApiError(400, 20001, f"callee: {exc}") from None
    return JSONResponse({"number": body["number"], "kind": callee.kind}, status_code=201)


async def simulated_call_result(request: Request) -> Response:
    """A call's result once it ended (202 with its status while it is live)."""
    sid = request.path_params["sid"]
    call = simulator_of(request).carrier.calls.get(sid)
    if call is None:
        raise not_found(request.url.path)
    authenticate_account(request, call.record.account_sid)
    if call.live:
        return JSONResponse({"call_sid": sid, "status": call.status}, status_code=202)
    return JSONResponse((await call.wait()).to_json())


def _control_client(request: Request) -> Simulator:
    """Fault control is for a test on this machine: a loopback peer with an account's
    credentials."""
    sim = simulator_of(request)
    peer = request.client.host if request.client else ""
    if not is_loopback(peer):
        raise TwilioApiError(403, 20403, "the fault routes answer loopback clients only")
    basic_account(request, sim.tokens)
    return sim


async def arm_fault(request: Request) -> Response:
    """Arm a fault (see the ``faults`` module); loopback clients only."""
    sim = _control_client(request)
    try:
        fault = fault_from_json(await request.json())
    except ValueError as exc:  # FaultError, or a body that is not JSON
        raise TwilioApiError(400, 20001, f"fault: {exc}") from None
    except TypeError as exc:
        raise TwilioApiError(400, 20001, f"fault: {exc}") from None
    sim.faults.add(fault)
    return JSONResponse(fault.to_json(), status_code=201)


async def list_faults(request: Request) -> Response:
    sim = _control_client(request)
    return JSONResponse({"faults": [f.to_json() for f in sim.faults.armed()]})


async def clear_faults(request: Request) -> Response:
    _control_client(request).faults.clear()
    return Response(status_code=204)


async def disarm_fault(request: Request) -> Response:
    sim = _control_client(request)
    if not sim.faults.remove(request.path_params["fault_id"]):
        raise not_found(request.url.path)
    return Response(status_code=204)


SIMULATOR_ROUTES: list[BaseRoute] = [
    Route("/_simulator/Calls", simulate_call, methods=["POST"]),
    Route("/_simulator/Callees", set_callee, methods=["POST"]),
    Route("/_simulator/Calls/{sid}", simulated_call_result, methods=["GET"]),
    Route("/_simulator/faults", arm_fault, methods=["POST"]),
    Route("/_simulator/faults", list_faults, methods=["GET"]),
    Route("/_simulator/faults", clear_faults, methods=["DELETE"]),
    Route("/_simulator/faults/{fault_id}", disarm_fault, methods=["DELETE"]),
]
"""Not Twilio: the simulator's control routes (scripted calls, callees, faults)."""
