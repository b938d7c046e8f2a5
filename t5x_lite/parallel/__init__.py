"""The device mesh, logical axis rules and multi-process start-up."""
