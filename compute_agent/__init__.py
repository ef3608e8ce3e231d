"""The compute agent: reconciles libvirt on one host to the API's desired state."""
