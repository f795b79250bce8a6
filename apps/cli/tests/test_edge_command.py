"""`krypton edge`: the parser routes to the box (default) or to the region's forwarder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from krypton.cli.main import build_parser
from krypton.cli.up import _edge_leaf_passwords


def test_edge_defaults_to_the_box_and_offers_the_region_side() -> None:
    parser = build_parser()
    assert parser.parse_args(["edge"]).side == "box"
    assert parser.parse_args(["edge", "region"]).side == "region"


def test_up_can_open_a_leaf_node_listener_for_edge_boxes() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).leafnode_port is None
    assert parser.parse_args(["up", "--leafnode-port", "7422"]).leafnode_port == 7422


def test_up_takes_the_boxes_leaf_passwords_from_a_file(tmp_path: Path) -> None:
    parser = build_parser()
    assert _edge_leaf_passwords(parser.parse_args(["up"]).edge_leaf_passwords) == {}
    good = tmp_path / "boxes.json"
    good.write_text(json.dumps({"010000001": "s3cret"}))
    args = parser.parse_args(["up", "--leafnode-port", "7422", "--edge-leaf-passwords", str(good)])
    assert _edge_leaf_passwords(args.edge_leaf_passwords) == {"010000001": "s3cret"}
    bad = tmp_path / "bad.json"
    bad.write_text('["010000001"]')
    with pytest.raises(SystemExit, match="FINESS to password"):
        _edge_leaf_passwords(str(bad))
