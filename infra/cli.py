"""``python -m infra``: what a stack will deploy, without Pulumi or accounts.

``python -m infra settings --stack dev`` prints, as JSON, the two documents ``pulumi up`` writes:
the media plane's settings (the Modal secret ``CALLPLANE_MEDIA_CONFIG``) and the edge's config
(the worker's secret binding ``CALLPLANE_EDGE_CONFIG``), every secret shown as the config key it
comes from. It works before the secrets are set, marking each missing one with the command that
sets it, so a team can check a stack before it has a Twilio, Modal or OpenAI account.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.config import ConfigError, plan_numbers
from infra.program import media_urls
from infra.settings import edge_config_json, media_settings, redacted
from infra.stack_file import StackFile, read_stack_file

__all__ = ["app", "deployed_documents"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="What a callplane stack deploys, from its Pulumi.<stack>.yaml.",
)

StackOption = Annotated[str, typer.Option("--stack", "-s", help="The stack: Pulumi.<STACK>.yaml.")]
ProjectOption = Annotated[
    Path, typer.Option("--project-dir", help="Where Pulumi.yaml and the stack files are.")
]


def _known_numbers(stack: StackFile) -> list[tuple[str, str, str, str]]:
    """``(E.164, profile, region, country)`` of the numbers known before ``pulumi up``: the
    ones imported by number (a bought number is known only once it is bought)."""
    rows = []
    for plan in plan_numbers(stack.config):
        entry = plan.entry
        ref = entry.import_ or ""
        if ref.startswith("+"):
            region = entry.region or stack.config.default_region
            rows.append((ref, entry.profile, region, entry.country or ""))
    return rows


def deployed_documents(stack: StackFile) -> dict[str, Any]:
    """What ``pulumi up`` writes for ``stack``, secrets redacted: ``media`` (the Modal secret)
    and ``edge`` (the worker's config), with the numbers known before ``up``."""
    config = stack.config
    urls, http_urls, region = media_urls(config)
    numbers = _known_numbers(stack)
    media = media_settings(
        config, urls[region], http_urls[region], numbers=[(n, c) for n, _, _, c in numbers]
    )
    edge = json.loads(
        edge_config_json(config, [(n, p, r) for n, p, r, _ in numbers], urls, http_urls)
    )
    return {
        "stack": stack.name,
        "kind": config.kind,
        "missing": [f"callplane:{key}" for key in stack.missing],
        "encrypted": [f"callplane:{key}" for key in stack.encrypted],
        "media": redacted(media.model_dump(mode="json"), stack.secrets, stack.missing),
        "edge": redacted(edge, stack.secrets, stack.missing),
    }


@app.callback()
def _commands() -> None:
    """What a callplane stack deploys, from its Pulumi.<stack>.yaml."""


@app.command()
def settings(
    stack: StackOption,
    project_dir: ProjectOption = Path("."),
) -> None:
    """Print what `pulumi up` writes for the stack's media plane and edge, secrets redacted."""
    try:
        found = read_stack_file(stack, project_dir)
        documents = deployed_documents(found)
    except (ConfigError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(documents, indent=2, sort_keys=True))
    if found.missing:
        keys = ", ".join(f"callplane:{k}" for k in found.missing)
        typer.echo(f"not set yet (placeholders used): {keys}", err=True)


@app.command("edge-bundle")
def edge_bundle(
    dest: Annotated[
        Path,
        typer.Argument(
            help="Folder to write the bundle to: new, empty, or holding a bundle written before."
        ),
    ],
    stack: StackOption,
    project_dir: ProjectOption = Path("."),
) -> None:
    """Write the stack's Cloudflare worker bundle, exactly the modules `pulumi up` uploads, with
    the playground's static assets under DEST/assets/. The last line printed is the main module."""
    from infra.edge_bundle import ASSETS_DIR, BundleError, compatibility_flags, write_bundle
    from infra.program import REPO

    try:
        found = read_stack_file(stack, project_dir)
        config = found.config
        cloudflare = config.edge.cloudflare
        flags = compatibility_flags(cloudflare.compatibility_date) if cloudflare else []
        bundle = write_bundle(dest, REPO, playground=config.livekit is not None)
    except (BundleError, ConfigError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"edge worker bundle of stack {found.name} in {dest}:")
    for name in bundle.files:
        typer.echo(f"  {name}  ({bundle.content_type(name)})")
    if bundle.assets:
        typer.echo(f"static assets in {dest / ASSETS_DIR} ({len(bundle.assets)} files):")
        for name in bundle.assets:
            typer.echo(f"  /{name}")
    else:
        typer.echo("no static assets: the stack has no callplane:livekit, so no playground")
    if cloudflare is not None:
        typer.echo(f"compatibility date {cloudflare.compatibility_date}, flags {', '.join(flags)}")
    typer.echo("main module:")
    typer.echo(bundle.main_module)


def main() -> None:
    """Entry point of ``python -m infra <command>``."""
    app()
