"""Differential testing against Ollama's own Go decoder (SPEC §4.9): ``godecode/`` is a
small Go program with copies of Ollama's request types, :mod:`tests.differential.godecode`
builds and drives it."""
