"""ModalApp: deploys ``functions/app.py`` into the stack's Modal environment with modal's Python
API, with the media settings from Pulumi secrets in the Modal secret ``callplane-media``.

What runs where, honestly: :func:`plan` imports the Modal app for the stack's scaling entry and
reads back what would be deployed (app name, environment, secret, region, concurrency, timeout,
autoscaler settings, web label) without any network; the tests check it. :class:`ModalApi` makes
the calls that need a Modal account (environment, secret, ``App.deploy``, ``get_web_url``,
``App.stop``); without a token modal refuses before any network access, which the tests also
check, but a real deploy has not been exercised here (no Modal account).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from infra.providers.common import ProvisioningError, diff_props

__all__ = ["DeployPlan", "ModalApi", "ModalApp", "ModalAppProvider", "expected_web_url", "plan"]

MODULE = "functions.app"
SECRET_KEY = "CALLPLANE_MEDIA_CONFIG"
REPLACING = ("app_name", "environment")
UPDATABLE = ("scaling", "source_hash", "media_config", "workspace", "web_suffix")


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
    function_options: dict[str, Any] = field(default_factory=dict)
    regions: tuple[str, ...] = ()
    max_inputs: int | None = None
    target_inputs: int | None = None
    timeout: int | None = None
    app_tags: dict[str, str] = field(default_factory=dict)


def expected_web_url(workspace: str, label: str, web_suffix: str | None = None) -> str:
    """``https://<workspace>[-<suffix>]--<label>.modal.run`` (reference §9): known at preview, so
    the edge config and the stack outputs can name the media URL before the first deploy."""
    source = f"{workspace}-{web_suffix}" if web_suffix else workspace
    return f"https://{source}--{label}.modal.run"


@contextlib.contextmanager
def load_app(scaling: str) -> Iterator[ModuleType]:
    """``functions.app`` imported for the scaling entry ``scaling`` (it reads CALLPLANE_STACK at
    import); the previous import and environment are restored afterwards."""
    before = os.environ.get("CALLPLANE_STACK")
    had = MODULE in sys.modules
    os.environ["CALLPLANE_STACK"] = scaling
    try:
        module = importlib.reload(sys.modules[MODULE]) if had else importlib.import_module(MODULE)
        yield module
    finally:
        if before is None:
            os.environ.pop("CALLPLANE_STACK", None)
        else:
            os.environ["CALLPLANE_STACK"] = before
        if had:
            importlib.reload(sys.modules[MODULE])
        else:
            sys.modules.pop(MODULE, None)


def _plan_from(module: ModuleType, props: dict[str, Any]) -> DeployPlan:
    import warnings

    scaling = module.SCALING[props["scaling"]]
    fn = module.media
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = fn.info()
    concurrency = getattr(info, "concurrency_info", None)
    return DeployPlan(
        app_name=props["app_name"],
        environment=props["environment"],
        tag=props.get("source_hash") or "",
        scaling=props["scaling"],
        secret_name=module.SECRET_NAME,
        secret_keys=(SECRET_KEY,),
        function_name="media",
        label=f"{module.APP_NAME}-{module.STACK}",
        function_options=scaling.function_options(),
        regions=tuple(getattr(info, "regions", ()) or ()),
        max_inputs=getattr(concurrency, "max_inputs", None),
        target_inputs=getattr(concurrency, "target_inputs", None),
        timeout=getattr(info, "timeout", None),
        # modal keeps the tags privately (get_tags() is an RPC): read the value passed to App.
        app_tags={"stack": module.STACK},
    )


def plan(props: dict[str, Any]) -> DeployPlan:
    """The deploy this resource's inputs describe (no network, no Modal account)."""
    with load_app(props["scaling"]) as module:
        return _plan_from(module, props)


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

    def deploy(self, deploy: DeployPlan) -> str:
        """Deploy and return the media function's web URL."""
        with load_app(deploy.scaling) as module:
            try:
                module.app.deploy(
                    name=deploy.app_name, environment_name=deploy.environment, tag=deploy.tag
                )
                return str(module.media.get_web_url())
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
        url = self.api.deploy(deploy)
        return {**props, "web_url": url}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._deploy(props)
        return CreateResult(id_=f"{props['environment']}/{props['app_name']}", outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._deploy(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self.api.stop(props["app_name"], props["environment"])


class ModalApp(Resource, module="modal", name="App"):
    web_url: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(ModalAppProvider(), name, {"web_url": None, **props}, opts)
