"""Servers: the VMs tenants rent."""
