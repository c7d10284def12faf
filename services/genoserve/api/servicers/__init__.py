"""Thin servicers: proto -> codec -> family/runtime -> codec -> proto."""
