"""Development harness (not shipped in the production image): the local process stack, the demo
data and the `demo` management command. It sits on top of the platform and the node daemon."""
