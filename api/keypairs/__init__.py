"""SSH key pairs (/v1/keypairs and the OpenStack os-keypairs surface)."""
