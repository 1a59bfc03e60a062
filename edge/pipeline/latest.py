"""The latest-value cache: the last reading of every series, for the local API and the TUI.

Every reading passes through it, so its update is on the hot path (100,000 readings/s at the top
of the range). A flat dict keyed by `(device, tag)` builds and hashes a new tuple per reading;
here readings are kept per device, keyed by tag, and a batch from one device (every Modbus poll,
every OPC UA notification of one subscription) is one C-level `dict.update` with the tags' own,
cached string hashes. Mixed batches (an MQTT source carrying several devices) take the per-device
path device by device.

It reads like a mapping of `(device, tag)` to `Reading`, which is what its users need.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, MutableMapping

from protocols.reading import Reading

_DEVICE = operator.itemgetter(0)
_TAG = operator.itemgetter(1)

Series = tuple[str, str]


class LatestValues(MutableMapping[Series, Reading]):
    """The last reading of each `(device, tag)` series."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, Reading]] = {}

    def update_from(self, readings: list[Reading]) -> None:
        """Keep the readings of a batch (later ones win, as in time order)."""
        if not readings:
            return
        devices = set(map(_DEVICE, readings))
        if len(devices) == 1:
            (device,) = devices
            self._table(device).update(zip(map(_TAG, readings), readings, strict=True))
            return
        for reading in readings:  # rare: a source that mixes devices in one batch
            self._table(reading[0])[reading[1]] = reading

    def _table(self, device: str) -> dict[str, Reading]:
        table = self._by_device.get(device)
        if table is None:
            table = self._by_device[device] = {}
        return table

    def device(self, name: str) -> dict[str, Reading]:
        """The latest readings of one device by tag (a copy)."""
        return dict(self._by_device.get(name, {}))

    def __getitem__(self, key: Series) -> Reading:
        device, tag = key
        return self._by_device[device][tag]

    def __setitem__(self, key: Series, reading: Reading) -> None:
        device, tag = key
        self._table(device)[tag] = reading

    def __delitem__(self, key: Series) -> None:
        device, tag = key
        table = self._by_device[device]
        del table[tag]
        if not table:
            del self._by_device[device]

    def __iter__(self) -> Iterator[Series]:
        for device, table in list(self._by_device.items()):
            for tag in list(table):
                yield (device, tag)

    def __len__(self) -> int:
        return sum(map(len, self._by_device.values()))

    def readings(self) -> list[Reading]:
        """Every latest reading, device by device (cheaper than `values()`)."""
        return [r for table in self._by_device.values() for r in table.values()]
