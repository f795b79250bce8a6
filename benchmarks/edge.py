"""Edge box benchmark: C-STORE throughput into the box, and forwarding throughput to the region.

Starts the embedded regional platform (with a leaf node listener), the region's edge forwarder,
and an edge box whose leaf link runs through a relay the benchmark can cut. Then:

1. **C-STORE into the box** with the link cut: `--associations` concurrent pynetdicom SCUs send
   N synthetic instances (`--rows` x `--cols`, 16-bit); figures: instances/s and MB/s until the
   last C-STORE success (each instance fsynced in the spool before its success), per-instance
   latency p50/p95/p99.
2. **Forwarding** once the link is restored: from the box seeing its leaf link up again, the
   time until the box's spool and stream are empty (every chunk taken by the region, staged
   and handed to ingest), and until every instance is searchable through QIDO (indexed):
   instances/s and MB/s of each. The reconnection delay is reported apart. The box's status
   is read once a second, so small runs overstate these times by up to a second.

    .venv/bin/python benchmarks/edge.py --instances 2000 --associations 4 --rows 512 --cols 512

Saves `results/edge.json` (+ a timestamped copy) and `results/edge.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from common import (
    log,
    machine,
    machine_line,
    plot_path,
    postgres_version,
    print_table,
    pyplot,
    summarise,
    write_result,
)
from krypton.auth.dev_issuer import DevIssuer
from krypton.cli.platform import Platform, PlatformConfig
from krypton.dicom.synthetic import Population, render_instances
from krypton.edge.testing import LinkRelay, start_box, start_region_forwarder
from krypton.testing.servers import free_port

NAME = "edge"


def _datasets(n: int, rows: int, cols: int) -> tuple[str, list[Dataset], list[str]]:
    """N instances of one structure, as datasets; their study UIDs."""
    population = Population(seed=4242, n_patients=max(4, n // 20), structures=1)
    out: list[Dataset] = []
    studies: list[str] = []
    index = 0
    while len(out) < n:
        study = population.study(index, max_instances_per_series=20)
        index += 1
        studies.append(study.study_uid)
        for data in render_instances(study, rows=rows, cols=cols):
            out.append(dcmread(BytesIO(data)))
            if len(out) == n:
                break
    return population.structures[0].finess, out, studies


def _send(port: int, datasets: list[Dataset]) -> list[float]:
    """One association sending `datasets`; per-instance latency in seconds."""
    ae = AE(ae_title="BENCH")
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="KRYPTON_EDGE")
    if not assoc.is_established:
        msg = "association refused"
        raise RuntimeError(msg)
    latencies = []
    try:
        for ds in datasets:
            started = time.perf_counter()
            status = assoc.send_c_store(ds)
            latencies.append(time.perf_counter() - started)
            if not status or int(status.Status) != 0:
                msg = f"C-STORE failed: {status}"
                raise RuntimeError(msg)
    finally:
        assoc.release()
    return latencies


async def _wait(what: str, check: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(0.1)
    msg = f"{what}: not reached in {timeout} s"
    raise TimeoutError(msg)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log(f"generating {args.instances} instances of {args.rows}x{args.cols}")
    finess, datasets, studies = _datasets(args.instances, args.rows, args.cols)
    sizes = sum(len(ds.PixelData) for ds in datasets)
    with tempfile.TemporaryDirectory(prefix="krypton-bench-edge-") as tmp:
        state = Path(tmp)
        leaf_port = free_port()
        leaf_password = secrets.token_urlsafe(18)
        platform = Platform(
            PlatformConfig(
                state_dir=state / "region",
                http_port=0,
                nats_port=0,
                issuer_port=0,
                leafnode_port=leaf_port,
                edge_leaf_passwords={finess: leaf_password},
                log_level="WARNING",
            ),
            colour=False,
        )
        await platform.start(timeout=120)
        forwarder = start_region_forwarder(
            platform.service_env(), [finess], state / "edge-region.log"
        )
        relay = LinkRelay(leaf_port)
        await relay.start()
        issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)
        token = issuer.mint(role="producer", sub=f"edge-{finess}", structure=finess)
        box = await asyncio.to_thread(
            start_box,
            state / "edge",
            finess,
            f"nats-leaf://127.0.0.1:{relay.port}",
            platform.dicomweb_url,
            token,
            chunk_bytes=args.chunk_kib * 1024,
            log_level="WARNING",
            hub_password=leaf_password,
        )
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:

                async def status() -> dict[str, Any]:
                    result: dict[str, Any] = (await client.get(f"{box.url}/status")).json()
                    return result

                await _wait("link up", lambda: _is(status, "link", "up"), 60)
                await relay.cut()
                await _wait("link down", lambda: _is(status, "link", "down"), 60)
                log(f"C-STORE {len(datasets)} instances over {args.associations} associations")
                shares = [datasets[i :: args.associations] for i in range(args.associations)]
                started = time.monotonic()
                with ThreadPoolExecutor(args.associations) as pool:
                    results = await asyncio.gather(
                        *(
                            asyncio.get_running_loop().run_in_executor(
                                pool, _send, box.dimse_port, share
                            )
                            for share in shares
                        )
                    )
                store_s = time.monotonic() - started
                latencies = [x for r in results for x in r]

                async def held() -> bool:
                    # Everything in the box's stream (at least one chunk per instance), as the
                    # status reports it (refreshed every second), before the link returns.
                    s = await status()
                    return bool(s["spool_instances"] == 0 and s["queued_messages"] >= n)

                n = len(datasets)
                await _wait("box holding everything", held, args.timeout)
                log("restoring the link; forwarding")
                restored = time.monotonic()
                await relay.restore()
                relinked = await _wait("link up again", lambda: _is(status, "link", "up"), 60)

                async def drained() -> bool:
                    s = await status()
                    return bool(s["spool_instances"] == 0 and s["queued_messages"] == 0)

                drained_at = await _wait("box drained", drained, args.timeout)

                async def searchable() -> bool:
                    total = 0
                    for study in studies:
                        found = (
                            await client.get(
                                f"{platform.dicomweb_url}/studies",
                                params={
                                    "StudyInstanceUID": study,
                                    "includefield": "NumberOfStudyRelatedInstances",
                                },
                                headers=headers,
                            )
                        ).json()
                        if found:
                            total += found[0].get("00201208", {}).get("Value", [0])[0]
                    return total >= len(datasets)

                indexed_at = await _wait("all searchable", searchable, args.timeout)
        finally:
            box.stop()
            await relay.cut()
            forwarder.terminate()
            forwarder.wait(15)
            pg = await postgres_version(platform.pg_dsn) if platform.pg_dsn else None
            await platform.stop()
    mb = sizes / 1e6
    # Rates count from the link being up again (the box sees it within its 1 s status
    # period); the reconnection itself is reported apart.
    forward_s = drained_at - relinked
    indexed_s = indexed_at - relinked
    return {
        "machine": machine(pg),
        "params": vars(args),
        "instance_pixel_bytes": sizes // n,
        "cstore": {
            "elapsed_s": store_s,
            "instances_per_s": n / store_s,
            "mb_per_s": mb / store_s,
            "latency": summarise(latencies, store_s),
        },
        "relink_s": relinked - restored,
        "forward": {
            "elapsed_s": forward_s,
            "instances_per_s": n / forward_s,
            "mb_per_s": mb / forward_s,
        },
        "searchable": {
            "elapsed_s": indexed_s,
            "instances_per_s": n / indexed_s,
            "mb_per_s": mb / indexed_s,
        },
    }


async def _is(status: Any, key: str, expected: object) -> bool:
    return bool((await status())[key] == expected)


def report(result: dict[str, Any]) -> None:
    lat = result["cstore"]["latency"]
    rows = [
        [
            "C-STORE into the box (link down)",
            f"{result['cstore']['instances_per_s']:.1f}",
            f"{result['cstore']['mb_per_s']:.1f}",
            f"{result['cstore']['elapsed_s']:.1f}",
        ],
        [
            "forwarded to region ingest",
            f"{result['forward']['instances_per_s']:.1f}",
            f"{result['forward']['mb_per_s']:.1f}",
            f"{result['forward']['elapsed_s']:.1f}",
        ],
        [
            "searchable in the region (QIDO)",
            f"{result['searchable']['instances_per_s']:.1f}",
            f"{result['searchable']['mb_per_s']:.1f}",
            f"{result['searchable']['elapsed_s']:.1f}",
        ],
    ]
    sys.stdout.write(machine_line(result["machine"]) + "\n")
    print_table(["stage", "instances/s", "MB/s", "seconds"], rows)
    sys.stdout.write(f"leaf link back up {result['relink_s']:.1f} s after the WAN returned\n")
    sys.stdout.write(
        f"C-STORE latency p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, "
        f"p99 {lat['p99_ms']:.1f} ms\n"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = ["C-STORE in", "forwarded", "searchable"]
    values = [result[k]["instances_per_s"] for k in ("cstore", "forward", "searchable")]
    ax.bar(labels, values, color=["#4c72b0", "#55a868", "#c44e52"])
    ax.set_ylabel("instances/s")
    params = result["params"]
    ax.set_title(
        f"Edge box: {params['instances']} instances {params['rows']}x{params['cols']}, "
        f"{params['associations']} associations"
    )
    fig.tight_layout()
    fig.savefig(plot_path(NAME), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--associations", type=int, default=2)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--chunk-kib", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    path = write_result(NAME, result)
    report(result)
    log(f"saved {path}")


if __name__ == "__main__":
    main()
