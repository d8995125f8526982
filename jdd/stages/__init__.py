"""The driver's stages (teachers, recover, relabel, evaluate), split out of `jdd.run`.

`jdd.run` orders them and documents the interface a method module plugs into; each stage here
is skipped when its output in the workdir is complete, so a killed run resumes.
"""
