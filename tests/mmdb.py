"""Small MaxMind DB files made by the tests themselves (PyPI's mmdb-writer), in the layout
of GeoLite2-Country and GeoLite2-ASN: no database is ever downloaded."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# network -> (ISO country code, AS number)
NETWORKS = {
    "198.51.100.0/24": ("FR", 64500),
    "192.0.2.0/24": ("DE", 64501),
    "2001:db8:f::/48": ("FR", 64500),
}


def write(folder: Path, networks: dict[str, tuple[str, int]] = NETWORKS) -> tuple[Path, Path]:
    """(country database, ASN database) for `networks`, written into `folder`."""
    country = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    asn = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for net, (code, number) in networks.items():
        country.insert_network(IPSet([net]), {"country": {"iso_code": code,
                                                          "names": {"en": code}}})
        asn.insert_network(IPSet([net]), {"autonomous_system_number": number,
                                          "autonomous_system_organization": f"AS{number}"})
    paths = folder / "country.mmdb", folder / "asn.mmdb"
    country.to_db_file(str(paths[0]))
    asn.to_db_file(str(paths[1]))
    return paths


def corrupt_data(path: Path) -> None:
    """Overwrite the data section of the database at `path` in place with bytes no reader
    can decode, keeping its size, search tree and metadata: it still opens, and every
    lookup that finds a record fails."""
    import maxminddb

    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    data = path.read_bytes()
    start = meta.node_count * meta.record_size * 2 // 8 + 16  # the tree, then 16 zeros
    end = data.rfind(b"\xab\xcd\xefMaxMind.com")
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\xff" * (end - start))
