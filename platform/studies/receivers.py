"""What studies do when something happens on the floor below (consortia signals)."""

from __future__ import annotations

from django.dispatch import receiver

from consortia.signals import node_revoked

from . import services


@receiver(node_revoked, dispatch_uid="studies.withdraw_revoked_node")
def withdraw_revoked_node(sender, *, hospital, actor: str, **kwargs) -> list[str]:
    return services.hospital_withdraw(hospital=hospital, actor=actor, reason="its node was revoked")
