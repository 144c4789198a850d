"""ModalApp: deploys ``functions/app.py`` into the stack's Modal environment with modal's Python
API, with the media settings from Pulumi secrets in the Modal secret ``callplane-media``.

What a deploy is for (the scaling entry, the app name, the region, preemption) reaches the Modal
app as the environment variables of :class:`functions.deploy_settings.DeploySettings`, which
:func:`load_app` sets while it imports the app: the labels and the app name the functions are
declared with are those the Pulumi program built the edge's URLs from.

What runs where, honestly: :func:`plan` imports the Modal app for the stack's settings and reads
back what would be deployed (app name, environment, secret, region, preemption, concurrency,
timeout, autoscaler settings, web labels) without any network; the tests check it.
:class:`ModalApi` makes the calls that need a Modal account (environment, secret,
``App.deploy``, the deployed functions' ``get_web_url``, ``App.stop``); without a token modal
refuses before any network access, which the tests also check, but a real deploy has not been
exercised here (no Modal account). After a deploy, :func:`check_web_urls` compares the URLs
Modal serves the web functions at with those the edge was configured with.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from functions.deploy_settings import (
    DEFAULT_NONPREEMPTIBLE,
    DEFAULT_REGION,
    DEPLOY_VARS,
    DeploySettings,
    DeploySettingsError,
)
from infra.providers.common import ProvisioningError, diff_props

__all__ = [
    "WEB_FUNCTIONS",
    "DeployPlan",
    "ModalApi",
    "ModalApp",
    "ModalAppProvider",
    "check_web_urls",
    "expected_web_url",
    "load_app",
    "plan",
]

MODULE = "functions.app"
SECRET_KEY = "CALLPLANE_MEDIA_CONFIG"
#: The app's web functions, each with the web label it is declared with.
WEB_FUNCTIONS = ("media", "media_streams")
REPLACING = ("app_name", "environment")
UPDATABLE = (
    "scaling",
    "source_hash",
    "media_config",
    "workspace",
    "web_suffix",
    "region",
    "nonpreemptible",
    "expected_urls",
)


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy of the media app would put on Modal, read from the app definition."""

    app_name: str
    environment: str
    tag: str
    scaling: str
    secret_name: str
    secret_keys: tuple[str, ...]
    function_name: str
    label: str
    settings: DeploySettings
    streams_label: str = ""
    function_options: dict[str, Any] = field(default_factory=dict)
    regions: tuple[str, ...] = ()
    nonpreemptible: bool | None = None
    max_inputs: int | None = None
    target_inputs: int | None = None
    timeout: int | None = None
    app_tags: dict[str, str] = field(default_factory=dict)
    launcher_app_name: str = ""


def expected_web_url(workspace: str, label: str, web_suffix: str | None = None) -> str:
    """``https://<workspace>[-<suffix>]--<label>.modal.run``, Modal's URL of a deployed web
    function: known at preview, so the edge config and the stack outputs can name the media URLs
    before the first deploy (``web_suffix`` is the Modal environment's web suffix, if it has
    one)."""
    source = f"{workspace}-{web_suffix}" if web_suffix else workspace
    return f"https://{source}--{label}.modal.run"


def check_web_urls(
    expected: Mapping[str, str], deployed: Mapping[str, str | None], workspace: str
) -> None:
    """Refuse a deploy whose web functions Modal serves elsewhere than the edge expects.

    ``expected`` maps each web function to the URL the edge config was built from,
    ``deployed`` to the URL Modal reports after the deploy. Each mismatch names both URLs and
    the setting that makes them agree: the part before ``--`` is the workspace and the Modal
    environment's web suffix (``callplane:modal.workspace`` and ``callplane:modal.webSuffix``),
    the part after it the label (``callplane:modal.appName``).
    """
    problems: list[str] = []
    for function, want in expected.items():
        got = deployed.get(function)
        if got == want:
            continue
        head = (
            f"Modal serves the {function} function at {got}, but the edge was configured with "
            f"{want}"
            if got
            else f"Modal reports no web URL for the {function} function (the edge was "
            f"configured with {want})"
        )
        problems.append(f"{head}. Fix: {_url_fix(want, got, workspace)}")
    if problems:
        raise ProvisioningError(
            "callplane:modal: the deployed web functions are not where the edge sends calls:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _url_fix(want: str, got: str | None, workspace: str) -> str:
    def split(url: str) -> tuple[str, str]:
        host = urlsplit(url).hostname or ""
        source, _, rest = host.partition("--")
        return source, rest.removesuffix(".modal.run")

    redeploy = "then run `pulumi up` again, which points the edge at the new URLs"
    if not got:
        return (
            "check that functions/app.py still declares the function as a web endpoint, "
            "then run `pulumi up` again"
        )
    (want_source, want_label), (got_source, got_label) = split(want), split(got)
    if want_source != got_source:
        if got_source == workspace:
            return (
                "the Modal environment has no web suffix: remove callplane:modal.webSuffix, "
                + redeploy
            )
        if got_source.startswith(f"{workspace}-"):
            suffix = got_source.removeprefix(f"{workspace}-")
            return f"set callplane:modal.webSuffix to {suffix!r}, " + redeploy
        return (
            f"set callplane:modal.workspace to the workspace of the Modal token (the URL says "
            f"{got_source!r}, with the environment's web suffix after a '-' if it has one), "
            + redeploy
        )
    if want_label != got_label:
        return (
            f"Modal did not keep the label {want_label!r} (a host name holds at most 63 "
            "characters): choose a shorter callplane:modal.appName, " + redeploy
        )
    return "make the edge config and the Modal app agree on the scheme and host, " + redeploy


def settings_from(props: Mapping[str, Any]) -> DeploySettings:
    """The deploy settings a ModalApp's inputs describe (``scaling`` is the stack's entry)."""
    try:
        return DeploySettings(
            stack=props["scaling"],
            app_name=props["app_name"],
            region=props.get("region") or DEFAULT_REGION,
            nonpreemptible=bool(props.get("nonpreemptible", DEFAULT_NONPREEMPTIBLE)),
        )
    except DeploySettingsError as exc:
        raise ProvisioningError(
            f"callplane:modal: {exc} (check callplane:modal.scaling, appName and region)"
        ) from None


@contextlib.contextmanager
def load_app(settings: DeploySettings) -> Iterator[ModuleType]:
    """A fresh import of ``functions.app`` for ``settings`` (it reads them from the environment at
    import). The environment and whatever import of the app existed are restored afterwards, so
    an earlier import keeps its own settings."""
    env_before = {name: os.environ.get(name) for name in DEPLOY_VARS}
    module_before = sys.modules.pop(MODULE, None)
    package = importlib.import_module(MODULE.rpartition(".")[0])
    attribute = MODULE.rpartition(".")[2]
    os.environ.update(settings.to_env())
    try:
        yield importlib.import_module(MODULE)
    finally:
        for name, value in env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if module_before is None:
            sys.modules.pop(MODULE, None)
            if hasattr(package, attribute):
                delattr(package, attribute)
        else:
            sys.modules[MODULE] = module_before
            setattr(package, attribute, module_before)


def _label(function: Any) -> str:
    """The web label a modal Function is declared with (modal keeps it in the webhook config)."""
    from modal._utils.async_utils import synchronizer

    inner: Any = synchronizer._translate_in(function)  # type: ignore[no-untyped-call]
    return str(inner._webhook_config.requested_suffix)


def _plan_from(module: ModuleType, props: dict[str, Any], settings: DeploySettings) -> DeployPlan:
    import warnings

    scaling = module.SCALING[settings.stack]
    fn = module.media
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = fn.info()
    concurrency = getattr(info, "concurrency_info", None)
    return DeployPlan(
        app_name=module.app.name,
        environment=props["environment"],
        tag=props.get("source_hash") or "",
        scaling=settings.stack,
        secret_name=module.SECRET_NAME,
        secret_keys=(SECRET_KEY,),
        function_name="media",
        label=_label(module.media),
        settings=settings,
        streams_label=_label(module.media_streams),
        function_options=scaling.function_options(module.DEPLOY),
        regions=tuple(getattr(info, "regions", ()) or ()),
        nonpreemptible=getattr(info, "nonpreemptible", None),
        max_inputs=getattr(concurrency, "max_inputs", None),
        target_inputs=getattr(concurrency, "target_inputs", None),
        timeout=getattr(info, "timeout", None),
        # modal keeps the tags privately (get_tags() is an RPC): read the value passed to App.
        app_tags={"stack": module.STACK},
        launcher_app_name=module.agent_launcher().app_name,
    )


def plan(props: dict[str, Any]) -> DeployPlan:
    """The deploy this resource's inputs describe (no network, no Modal account)."""
    settings = settings_from(props)
    with load_app(settings) as module:
        return _plan_from(module, props, settings)


class ModalApi:
    """The calls that need a Modal account; every failure names the fix."""

    def _explain(self, exc: BaseException, doing: str) -> ProvisioningError:
        import modal.exception

        if isinstance(exc, modal.exception.AuthError):
            fix = (
                "give `pulumi up` a Modal token: export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
                "(modal token new, or a service user's token for CI)"
            )
        else:
            fix = "check the Modal workspace, callplane:modal.environment and Modal's status"
        return ProvisioningError(
            f"callplane:modal: could not {doing}: {type(exc).__name__}: {exc}. Fix: {fix}"
        )

    def ensure_environment(self, name: str) -> None:
        import modal
        import modal.exception

        try:
            modal.Environment.objects.create(name)
        except modal.exception.AlreadyExistsError:
            pass
        except Exception as exc:
            raise self._explain(exc, f"create the Modal environment {name!r}") from None

    def put_secret(self, name: str, environment: str, values: dict[str, str]) -> None:
        import modal

        try:
            modal.Secret.objects.create(
                name, values, allow_existing=True, environment_name=environment
            )
            # allow_existing keeps old values: write them explicitly.
            modal.Secret.from_name(name, environment_name=environment).update(values)
        except Exception as exc:
            raise self._explain(exc, f"write the Modal secret {name!r}") from None

    def deploy(self, deploy: DeployPlan) -> dict[str, str | None]:
        """Deploy, then return the web URL Modal serves each web function at."""
        with load_app(deploy.settings) as module:
            try:
                module.app.deploy(
                    name=deploy.app_name, environment_name=deploy.environment, tag=deploy.tag
                )
                return {name: getattr(module, name).get_web_url() for name in WEB_FUNCTIONS}
            except Exception as exc:
                raise self._explain(exc, f"deploy {deploy.app_name!r}") from None

    def stop(self, app_name: str, environment: str) -> None:
        import modal
        import modal.exception

        try:
            modal.App.lookup(app_name, environment_name=environment).stop()
        except modal.exception.NotFoundError:
            pass
        except Exception as exc:
            raise self._explain(exc, f"stop {app_name!r}") from None


class ModalAppProvider(ResourceProvider):
    serialize_as_secret_always = False

    def __init__(self, api: ModalApi | None = None) -> None:
        self.api = api or ModalApi()

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_props(olds, news, updatable=UPDATABLE, replacing=REPLACING)

    def _deploy(self, props: dict[str, Any]) -> dict[str, Any]:
        deploy = plan(props)
        self.api.ensure_environment(deploy.environment)
        self.api.put_secret(
            deploy.secret_name, deploy.environment, {SECRET_KEY: props["media_config"]}
        )
        urls = self.api.deploy(deploy)
        check_web_urls(props["expected_urls"], urls, props["workspace"])
        return {**props, "web_url": urls["media"], "web_urls": urls}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._deploy(props)
        return CreateResult(id_=f"{props['environment']}/{props['app_name']}", outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._deploy(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self.api.stop(props["app_name"], props["environment"])


class ModalApp(Resource, module="modal", name="App"):
    """The media plane's Modal app. Inputs: ``app_name``, ``environment``, ``scaling``,
    ``region``, ``nonpreemptible``, ``workspace``, ``web_suffix``, ``source_hash``,
    ``media_config`` (secret) and ``expected_urls`` (web function -> the URL the edge was
    configured with; a deploy that Modal serves elsewhere fails, naming both)."""

    web_url: pulumi.Output[str]
    web_urls: pulumi.Output[dict[str, str]]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(
            ModalAppProvider(), name, {"web_url": None, "web_urls": None, **props}, opts
        )
