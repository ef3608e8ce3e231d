"""Request and response models of the guest metrics endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

from api.fields import ID_PATTERN, STRICT

_Counter = Annotated[int, Field(ge=0, le=2**63 - 1)]
_Kib = Annotated[int, Field(ge=0, le=2**53)]


class GuestSample(BaseModel):
    """One server's libvirt counters (cumulative) and memory gauges at the batch's time.

    Counters the hypervisor does not report are 0 (libvirt's test driver reports none).
    """

    model_config = STRICT
    server_id: Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                pattern=ID_PATTERN)]
    cpu_time_ns: _Counter = 0
    vcpus: Annotated[int, Field(ge=0, le=4096)] = 0
    memory_kib: _Kib = 0
    # The guest's unused memory (balloon driver statistics) and the QEMU process's RSS;
    # memory used is current - unused when the guest reports it, else the RSS.
    memory_unused_kib: _Kib | None = None
    memory_rss_kib: _Kib | None = None
    disk_read_bytes: _Counter = 0
    disk_write_bytes: _Counter = 0
    net_rx_bytes: _Counter = 0
    net_tx_bytes: _Counter = 0


class GuestSamplesIn(BaseModel):
    """One host's samples of one interval: every server read at (about) ``at``."""

    model_config = STRICT
    at: AwareDatetime
    samples: list[GuestSample] = Field(max_length=10_000)


class GuestSamplesOut(BaseModel):
    """What the API did with a batch: samples taken, and the server ids it ignored (not
    live servers of this host)."""

    accepted: int
    ignored: list[str]


class MetricPoint(BaseModel):
    """The average of a metric over ``[at, at + step)``, from ``samples`` samples."""

    at: datetime
    value: float
    samples: int


class MetricSeriesOut(BaseModel):
    """A metric of one server over a time range, one point per step that has samples."""

    server_id: str
    name: str
    unit: str
    start: datetime
    end: datetime
    step: int
    points: list[MetricPoint]
