"""The Pulumi program: read and validate the stack config, then declare every resource.

``infra/__main__.py`` calls :func:`run`. Nothing is declared until the whole config has passed
:func:`infra.config.load` (shape, secrets, country rules), so a bad config fails ``pulumi
preview`` with every problem listed and no resource touched.

Order of the wiring: edge URL -> SIP trunk (cloud, only for numbers routed over SIP) -> numbers,
whose webhooks point at the edge -> media URLs (known at preview) and the media settings
(:mod:`infra.settings`; the numbers are the default outbound caller IDs) -> LiveKit inbound trunk
and dispatch rule for the numbers -> edge config (numbers to profiles and regions) -> the edge
worker (Cloudflare on cloud stacks; the local edge reads the ``edgeConfig`` output) -> outputs
(numbers, URLs, the playground link; on the local stack also ``mediaConfig``, the local media
app's settings: :mod:`callplane_dev.stack_outputs` turns both documents into running planes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from infra.config import (
    NAMESPACE,
    ConfigError,
    PlannedNumber,
    StackConfig,
    load,
    plan_numbers,
)
from infra.providers.livekit_sip import LiveKitSip
from infra.providers.modal_app import ModalApp, expected_web_url
from infra.providers.twilio_number import TwilioPhoneNumber
from infra.providers.twilio_trunk import TwilioSipTrunk
from infra.settings import edge_config_json, media_settings

__all__ = [
    "EdgeWorker",
    "MediaPlane",
    "Stack",
    "Telephony",
    "read_config",
    "run",
    "source_hash",
]

REPO = Path(__file__).resolve().parent.parent
#: What the Modal image and the Cloudflare worker bundle carry (the tag changes with them).
SOURCE_PACKAGES = ("callplane", "functions", "edge_worker")
#: Where ``pulumi up`` writes the Cloudflare worker's bundle (one folder per script name): the
#: modules it uploads and the playground's assets, which the provider uploads from ``assets/``.
#: The file set is computed from the entry's imports by :mod:`infra.edge_bundle`.
EDGE_BUNDLE = Path(".callplane") / "edge-bundle"


def _parse(value: Any) -> Any:
    if (isinstance(value, str) and value[:1] in ("{", "[")) or value in ("true", "false"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_config() -> StackConfig:
    """The ``callplane:`` config of the running stack, validated (ConfigError otherwise)."""
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = {}
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    for full_key, value in merged.items():
        namespace, _, key = full_key.partition(":")
        if namespace == NAMESPACE and key:
            raw[key] = _parse(value)
    secret = set(runtime_config._SECRET_KEYS.get()) | set(
        runtime_config.get_config_secret_keys_env()
    )
    return load(raw, secret_keys=secret)


def source_hash(packages: Sequence[str] = SOURCE_PACKAGES, root: Path = REPO) -> str:
    """A digest of every ``.py`` file of ``packages``: the deploy tag; it changes with the code."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _secret(value: str | None) -> pulumi.Output[str] | None:
    return None if value is None else pulumi.Output.secret(value)


def _ws(url: str) -> str:
    return "wss://" + url.removeprefix("https://") if url.startswith("https://") else url


@dataclass(frozen=True)
class OwnedNumber:
    plan: PlannedNumber
    resource: TwilioPhoneNumber
    region: str


class MediaPlane(pulumi.ComponentResource):
    """The media functions: a ModalApp on cloud stacks; on the local stack the local media app
    (``callplane dev``) at ``callplane:media.urls``, so nothing is declared."""

    urls: dict[str, str]  # region -> where Twilio's media streams go (the edge's TwiML)
    http_urls: dict[str, str]  # region -> the media app's HTTP routes (callbacks, dispatch)
    app: ModalApp | None

    def __init__(
        self,
        name: str,
        config: StackConfig,
        stack: str,
        numbers: Sequence[OwnedNumber] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("callplane:index:MediaPlane", name, None, opts)
        self.app = None
        self.urls, self.http_urls, region = media_urls(config)
        if config.kind == "cloud":
            modal = config.modal
            assert modal is not None
            self.app = ModalApp(
                f"{name}-modal",
                {
                    "app_name": modal.app_name,
                    "environment": modal.environment or stack,
                    "scaling": modal.scaling,
                    "region": modal.region,
                    "nonpreemptible": modal.nonpreemptible,
                    "workspace": modal.workspace,
                    "web_suffix": modal.web_suffix,
                    "source_hash": source_hash(),
                    "media_config": pulumi.Output.secret(
                        _media_config(config, self.urls[region], self.http_urls[region], numbers)
                    ),
                    # Checked against the deployed functions' URLs after the deploy.
                    "expected_urls": modal_web_urls(config),
                },
                pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"urls": self.urls, "http_urls": self.http_urls})


def modal_web_urls(config: StackConfig) -> dict[str, str]:
    """The web URLs of a cloud stack's Modal functions (``media``: the HTTP routes,
    ``media_streams``: Twilio's media streams), known before the first deploy from the labels
    functions/app.py declares them with; checked against the deployed ones after it."""
    from functions.deploy_settings import web_labels

    modal = config.modal
    assert modal is not None, "only a cloud stack has Modal functions"
    labels = web_labels(modal.app_name, modal.scaling)
    return {
        "media": expected_web_url(modal.workspace, labels.media, modal.web_suffix),
        "media_streams": expected_web_url(modal.workspace, labels.streams, modal.web_suffix),
    }


def media_urls(config: StackConfig) -> tuple[dict[str, str], dict[str, str], str]:
    """``(urls, http_urls, region)``: per region, where Twilio's media streams go (the edge's
    TwiML) and where the media app's HTTP routes are (callbacks, dispatch); and the region the
    Modal app serves. Configured URLs (the local stack's, or a cloud stack's own front) take
    both roles; a cloud stack adds the Modal functions' URLs, known before the first deploy."""
    urls = dict(config.media.urls)
    http_urls = dict(config.media.urls)
    region = config.default_region
    if config.kind == "cloud":
        web = modal_web_urls(config)
        region = config.default_region if config.media.urls else "default"
        urls.setdefault(region, _ws(web["media_streams"]))
        http_urls.setdefault(region, web["media"])
    return urls, http_urls, region


def _media_config(
    config: StackConfig, media_base: str, http_base: str, numbers: Sequence[OwnedNumber]
) -> pulumi.Output[str]:
    """The media settings once the numbers are known (their caller IDs), checked now: at
    preview a bought number is not known yet, and a bad profile or tool must still fail."""
    media_settings_json(config, media_base, http_base)
    pairs = [
        pulumi.Output.all(n.resource.phone_number, n.plan.entry.country or "") for n in numbers
    ]
    return pulumi.Output.all(*pairs).apply(
        lambda rows: media_settings_json(
            config, media_base, http_base, [(str(r[0] or ""), str(r[1])) for r in rows]
        )
    )


def media_settings_json(
    config: StackConfig,
    media_base: str,
    http_base: str | None = None,
    numbers: Sequence[tuple[str, str]] = (),
) -> str:
    """The media function's settings (``CALLPLANE_MEDIA_CONFIG``) from the one generator,
    :func:`infra.settings.media_settings`, validated here so that a bad profile, tool or URL
    fails at preview, not in the container. ``numbers`` are the stack's ``(E.164, country)``
    pairs for the default outbound caller IDs.

    On the local stack the same document is the ``mediaConfig`` output, which the local media
    app is started from (:func:`callplane_dev.stack_outputs.planes_from_outputs`).
    """
    return media_settings(config, media_base, http_base, numbers=numbers).model_dump_json()


class Telephony(pulumi.ComponentResource):
    """The stack's numbers (bought or imported), their webhooks, and the Twilio SIP trunk for
    numbers routed to LiveKit over SIP."""

    numbers: list[OwnedNumber]
    trunk: TwilioSipTrunk | None

    def __init__(
        self,
        name: str,
        config: StackConfig,
        stack: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("callplane:index:Telephony", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        creds = {
            "account_sid": config.twilio.account_sid,
            "auth_token": pulumi.Output.secret(config.twilio_auth_token),
            "api_base_url": config.twilio.api_base_url,
        }
        self.trunk = None
        plans = plan_numbers(config)
        if any(p.entry.route == "sip" for p in plans):
            assert config.livekit is not None and config.livekit.sip_uri is not None
            self.trunk = TwilioSipTrunk(
                f"{name}-sip-trunk",
                {
                    **creds,
                    "friendly_name": f"callplane {stack}",
                    "origination_sip_url": config.livekit.sip_uri,
                },
                child,
            )
        edge = config.edge.url
        self.numbers = []
        for p in plans:
            e = p.entry
            props: dict[str, Any] = {
                **creds,
                "entry": p.describe(),
                "friendly_name": e.friendly_name or f"callplane {stack} {p.name}"[:64],
                "voice_url": f"{edge}/twilio/voice",
                "voice_method": "POST",
                "status_callback": f"{edge}/twilio/status",
                "status_callback_method": "POST",
                "protected": e.protect,
            }
            if e.is_import:
                props.update(mode="import", import_ref=e.import_)
            else:
                props.update(
                    mode="buy",
                    country=e.country,
                    number_type=e.type,
                    area_code=e.area_code,
                    contains=e.contains,
                    locality=e.locality,
                    bundle_sid=e.bundle,
                    address_sid=e.address,
                )
            if e.route == "sip" and self.trunk is not None:
                props["trunk_sid"] = self.trunk.trunk_sid
            resource = TwilioPhoneNumber(
                f"number-{p.name}",
                props,
                pulumi.ResourceOptions(
                    parent=self,
                    # A protected number is never released: Pulumi forgets it on destroy or
                    # replace, and the provider refuses to release it as a second guard.
                    retain_on_delete=e.protect,
                    additional_secret_outputs=["auth_token"],
                ),
            )
            self.numbers.append(OwnedNumber(p, resource, e.region or config.default_region))
        self.register_outputs({"numbers": [n.resource.phone_number for n in self.numbers]})


class EdgeWorker(pulumi.ComponentResource):
    """The edge: a Cloudflare Python Worker on cloud stacks (``pulumi-cloudflare``, imported only
    there); on the local stack the local edge at ``callplane:edge.url``, which reads its config
    from the stack output ``edgeConfig``."""

    config_json: pulumi.Output[str]
    script: Any

    def __init__(
        self,
        name: str,
        config: StackConfig,
        numbers: Sequence[OwnedNumber],
        media_urls: Mapping[str, str],
        http_urls: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("callplane:index:EdgeWorker", name, None, opts)
        self.script = None
        routes = pulumi.Output.all(
            *[
                pulumi.Output.all(n.resource.phone_number, n.plan.entry.profile, n.region)
                for n in numbers
            ]
        )
        self.config_json = pulumi.Output.secret(
            routes.apply(lambda rows: edge_config_json(config, rows, media_urls, http_urls))
        )
        if config.kind == "cloud":
            self.script = _cloudflare_worker(name, config, self.config_json, self)
        self.register_outputs({"url": config.edge.url})


def playground_access(config: StackConfig) -> str:
    """How to get into the playground on this stack, for the ``playground`` output."""
    if config.livekit is None:
        return (
            "not available: the stack has no callplane:livekit, so the edge mints no web tokens. "
            "Fix: set callplane:livekit and callplane:livekitApiSecret"
        )
    ways = []
    if config.web_key:
        ways.append(
            "open the secret output playgroundLink (pulumi stack output playgroundLink "
            "--show-secrets): it carries callplane:webKey as ?key="
        )
    if config.link_secret:
        ways.append(
            "or share a signed room link: ?room=<room>&link=<edge_worker.web_links."
            "sign_web_link(callplane:linkSecret, room, expires_at)>"
        )
    if not ways:
        return (
            "the page loads but /token refuses every request: the stack has neither "
            "callplane:webKey nor callplane:linkSecret. Fix: pulumi config set --secret "
            f'callplane:webKey "$({_SECRET_CMD})", then pulumi up'
        )
    return "; ".join(ways)


_SECRET_CMD = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def _cloudflare_worker(
    name: str, config: StackConfig, config_json: pulumi.Output[str], parent: pulumi.Resource
) -> Any:
    """The edge as a Cloudflare Python Worker: the bundle computed from the entry's imports
    (:func:`infra.edge_bundle.compute_bundle`), written under :data:`EDGE_BUNDLE`, with the
    playground served as static assets when the stack has LiveKit (else there is no playground
    to serve). A bundle that cannot be built (a third-party import, the playground not built)
    fails the preview with the file and the fix."""
    import base64

    import pulumi_cloudflare as cloudflare

    from infra.edge_bundle import ASSETS_DIR, BundleError, compatibility_flags, write_bundle

    cf = config.edge.cloudflare
    assert cf is not None
    folder = REPO / EDGE_BUNDLE / cf.script_name
    try:
        flags = compatibility_flags(cf.compatibility_date)
        bundle = write_bundle(folder, REPO, playground=config.livekit is not None)
    except BundleError as exc:
        raise pulumi.RunError(str(exc)) from None
    main = bundle.main_module
    # The provider sends ``content`` as the main module's part and ``files`` as the other
    # modules, each under its path, which is the name the other modules import it by.
    files = {
        rel: cloudflare.WorkersScriptFilesArgs(
            content_type=bundle.content_type(rel),
            content_base64=base64.b64encode(content).decode(),
        )
        for rel, content in bundle.files.items()
        if rel != main
    }
    assets = None
    if bundle.assets:
        assets = cloudflare.WorkersScriptAssetsArgs(
            directory=str(folder / ASSETS_DIR),
            # /playground/ serves playground/index.html; a path that is no asset reaches the
            # worker (/, /twilio/..., /token, /livekit/webhook, /healthz).
            config=cloudflare.WorkersScriptAssetsConfigArgs(html_handling="auto-trailing-slash"),
        )
    return cloudflare.WorkersScript(
        f"{name}-script",
        account_id=cf.account_id,
        script_name=cf.script_name,
        main_module=main,
        content=bundle.files[main].decode("utf-8"),
        content_type=bundle.content_type(main),
        files=files,
        assets=assets,
        compatibility_date=cf.compatibility_date,
        compatibility_flags=flags,
        bindings=[
            cloudflare.WorkersScriptBindingArgs(
                name="CALLPLANE_EDGE_CONFIG", type="secret_text", text=config_json
            )
        ],
        opts=pulumi.ResourceOptions(parent=parent),
    )


class Stack:
    """Everything one stack declares, kept for the tests to inspect."""

    def __init__(self, config: StackConfig, stack: str) -> None:
        self.config = config
        # The numbers first: their webhooks point at the edge (known from the config), and the
        # media settings take their default outbound caller IDs from them.
        self.telephony = Telephony("telephony", config, stack)
        self.media = MediaPlane("media", config, stack, self.telephony.numbers)
        self.livekit: LiveKitSip | None = None
        lk = config.livekit
        if lk is not None:
            self.livekit = LiveKitSip(
                "livekit-sip",
                {
                    "url": lk.url,
                    "api_key": lk.api_key,
                    "api_secret": pulumi.Output.secret(config.livekit_api_secret or ""),
                    "trunk_name": f"callplane-{stack}",
                    "rule_name": f"callplane-{stack}",
                    "numbers": pulumi.Output.all(
                        *[n.resource.phone_number for n in self.telephony.numbers]
                    ),
                    "agent_name": lk.agent_name,
                    "room_prefix": lk.room_prefix,
                    "metadata": json.dumps({"stack": stack}),
                },
                pulumi.ResourceOptions(additional_secret_outputs=["api_secret"]),
            )
        self.edge = EdgeWorker(
            "edge", config, self.telephony.numbers, self.media.urls, self.media.http_urls
        )
        self.export()

    def export(self) -> None:
        config = self.config
        rows = [
            pulumi.Output.all(n.resource.phone_number, n.resource.sid).apply(_row(n))
            for n in self.telephony.numbers
        ]
        pulumi.export("kind", config.kind)
        pulumi.export("numbers", pulumi.Output.all(*rows))
        pulumi.export("edgeUrl", config.edge.url)
        pulumi.export("voiceWebhook", f"{config.edge.url}/twilio/voice")
        pulumi.export("statusWebhook", f"{config.edge.url}/twilio/status")
        pulumi.export("mediaUrls", self.media.urls)
        pulumi.export("mediaHttpUrls", self.media.http_urls)
        pulumi.export("edgeConfig", self.edge.config_json)
        playground = f"{config.edge.url}/playground/"
        pulumi.export("playground", {"url": playground, "access": playground_access(config)})
        if config.web_key and config.livekit is not None:
            pulumi.export(
                "playgroundLink", pulumi.Output.secret(f"{playground}?key={config.web_key}")
            )
        if config.kind == "local" and config.media_api_key:
            base = self.media.urls[config.default_region]
            pulumi.export(
                "mediaConfig",
                pulumi.Output.secret(_media_config(config, base, base, self.telephony.numbers)),
            )
        if self.media.app is not None:
            pulumi.export("modalWebUrl", self.media.app.web_url)
            # Read back from Modal after the deploy (and checked against the edge's URLs).
            pulumi.export("modalWebUrls", self.media.app.web_urls)
        if self.livekit is not None:
            pulumi.export(
                "livekit",
                {
                    "url": config.livekit.url if config.livekit else None,
                    "trunkId": self.livekit.trunk_id,
                    "dispatchRuleId": self.livekit.dispatch_rule_id,
                },
            )


def _row(n: OwnedNumber) -> Any:
    """The ``numbers`` output entry of one owned number, given ``[phone_number, sid]``."""
    e = n.plan.entry

    def row(values: list[Any]) -> dict[str, Any]:
        return {
            "name": n.plan.name,
            "number": values[0],
            "sid": values[1],
            "profile": e.profile,
            "region": n.region,
            "country": e.country,
            "type": e.type,
            "imported": e.is_import,
            "protected": e.protect,
        }

    return row


def run() -> Stack | None:
    """The program's entry: validate, then declare; a bad config ends it cleanly, listing
    every problem (no traceback), before any resource is registered."""
    try:
        config = read_config()
        return Stack(config, pulumi.get_stack())
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
