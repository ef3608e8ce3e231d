"""The OpenStack-compatible surface: Identity v3, Compute v2.1 and Image v2 subsets.

A translation layer only: every route parses the OpenStack request, calls the same minicloud
service the ``/v1`` API calls, and shapes the answer (and errors) as the OpenStack service
would. No business rule lives here (docs/openstack.md maps each call to its service).
"""
