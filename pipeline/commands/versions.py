from __future__ import annotations

import json
from typing import Annotated

import typer

from pipeline.commands.options import Registry
from pipeline.registry import DatasetRegistry

app = typer.Typer(no_args_is_help=True, help="Dataset versions: list, show, diff, tag, verify, gc.")
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command("list")
def list_(name: str, registry: Registry = None, json_: Json = False) -> None:
    """Versions of a dataset, oldest first."""
    versions = DatasetRegistry(registry).versions(name)
    if json_:
        print(json.dumps([m.to_dict() for m in versions], indent=2, sort_keys=True))
        return
    if not versions:
        raise ValueError(f"dataset {name!r} has no versions")
    print(f"{'version':<18} {'stage':<9} {'schema':<12} {'rows':>8} {'quar.':>6} {'dups':>5}  created_at                 tags")
    for m in versions:
        c = m.counts
        print(f"{m.version:<18} {m.stage:<9} {m.schema:<12} {c.output:>8} {c.quarantined:>6} {c.duplicates:>5}  "
              f"{m.created_at[:26]:<26} {','.join(m.tags)}")


@app.command()
def show(ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@TAG")],
         registry: Registry = None, json_: Json = False) -> None:
    """One version's manifest (NAME alone = latest)."""
    m = DatasetRegistry(registry).resolve(ref)
    if json_:
        print(m.to_json())
        return
    print(f"{m.ref}  stage={m.stage} schema={m.schema} parent={m.parent} created_at={m.created_at}")
    print(f"tags: {', '.join(m.tags) or '-'}")
    print(m.counts.line())
    for reason, n in m.stats.get("quarantine_reasons", {}).items():
        print(f"  quarantined {reason}: {n}")
    for s in m.shards + m.quarantine_shards:
        print(f"  {s.path}  rows={s.rows} bytes={s.bytes} sha256={s.sha256[:16]}")
    print(f"lineage: {m.lineage.get('command')} (paraforge {m.lineage.get('package_version')}, "
          f"git {m.lineage.get('git_revision')})")


@app.command()
def diff(a: str, b: str, registry: Registry = None, json_: Json = False) -> None:
    """Rows added, removed and changed from A to B, by sample_id."""
    d = DatasetRegistry(registry).diff(a, b)
    if json_:
        print(json.dumps(d, indent=2))
        return
    print(f"{d['a']} -> {d['b']}: +{d['added']} added, -{d['removed']} removed, "
          f"~{d['changed']} changed, ={d['unchanged']} unchanged")
    for kind in ("added", "removed", "changed"):
        for sid in d["examples"][kind]:
            print(f"  {kind:<8} {sid}")


@app.command()
def verify(ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@TAG")],
           registry: Registry = None) -> None:
    """Re-hash every shard of a version against its manifest; exit 1 on any corrupt or missing shard."""
    reg = DatasetRegistry(registry)
    m = reg.resolve(ref)
    problems = reg.verify(m)
    for problem in problems:
        print(problem)
    print(f"{m.ref}: {len(m.shards) + len(m.quarantine_shards)} shard(s) checked, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@app.command()
def tag(ref: str, tag: str, registry: Registry = None) -> None:
    """Point TAG at a version (tags move; versions never change)."""
    m = DatasetRegistry(registry).tag(ref, tag)
    print(f"{m.dataset}@{tag} -> {m.version}")


@app.command()
def gc(name: str, registry: Registry = None,
       older_than_hours: Annotated[float, typer.Option(help="keep anything younger (live runs are spared by their lease)")] = 24.0,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="count, delete nothing")] = False) -> None:
    """Delete shards no version lists and old completion markers of a dataset, sparing what live runs write."""
    found = DatasetRegistry(registry).collect_garbage(name, older_than_hours * 3600, dry_run)
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {found['shards']} unreferenced shard(s) ({found['bytes']} bytes with the work files) and "
          f"{found['work_files']} work file(s); {found['shards_kept']} shard(s) in use; {found['live_runs']} live run(s) spared")
