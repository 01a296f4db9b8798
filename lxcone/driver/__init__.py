"""The OpenNebula VMM driver: the only layer that knows OpenNebula's XML and action contract.

Every action runs parse -> convert -> validate -> execute: ``vmxml`` turns the VM XML into a typed
``Vm`` (refusing what it cannot trust), later modules convert it to runtime and storage specs.
"""
