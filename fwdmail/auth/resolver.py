"""DNS resolvers built from `[dns]`: the system's, or the configured "host:port" nameservers."""

from __future__ import annotations

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from fwdmail.config import DnsConfig, parse_host_port


def _configure(r: dns.resolver.Resolver, cfg: DnsConfig) -> None:
    if cfg.nameservers:
        r.nameservers = [dns.nameserver.Do53Nameserver(*parse_host_port(ns)) for ns in cfg.nameservers]
    r.lifetime = cfg.timeout
    r.timeout = min(cfg.timeout, 2.0)
    r.cache = dns.resolver.LRUCache(10_000)


def sync_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=not cfg.nameservers)
    _configure(r, cfg)
    return r


def async_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
    _configure(r, cfg)
    return r
