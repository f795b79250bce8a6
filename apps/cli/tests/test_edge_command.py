"""`krypton edge`: the parser routes to the box (default) or to the region's forwarder."""

from __future__ import annotations

from krypton.cli.main import build_parser


def test_edge_defaults_to_the_box_and_offers_the_region_side() -> None:
    parser = build_parser()
    assert parser.parse_args(["edge"]).side == "box"
    assert parser.parse_args(["edge", "region"]).side == "region"


def test_up_can_open_a_leaf_node_listener_for_edge_boxes() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).leafnode_port is None
    assert parser.parse_args(["up", "--leafnode-port", "7422"]).leafnode_port == 7422
