"""Signals of consortia state changes for the floors above (consortia does not import them)."""

from django.dispatch import Signal

# Sent inside node_revoke's transaction with hospital= and actor=. A receiver (studies: withdraw
# the hospital from its running studies) returns a list of sentences saying what followed.
node_revoked = Signal()
