"""DNS behind a narrow interface: the `Resolver` protocol, its answers, and the fake.

The dnspython adapter lives in `homing.dns.dnspython` and is imported by whoever builds
it (the composition root), so importing this package never loads dnspython.
"""

from homing.dns.fake import FakeResolver
from homing.dns.resolver import MX, AddressResult, Lookup, MXResult, Resolver, normalize_name

__all__ = [
    "MX",
    "AddressResult",
    "FakeResolver",
    "Lookup",
    "MXResult",
    "Resolver",
    "normalize_name",
]
