"""Fault injection: ``python -m ups.faults`` runs every failure scenario of ``docs/reliability.md``
against real ``python -m ups.train`` commands and prints what a user would see."""
