"""Cryptography: authenticated encryption of every stored byte, and password-wrapped keys.

A repository has one random *master key* (an encryption key and an id key). Each password
has a *key file* holding the master key encrypted under a key derived from that password
with scrypt, so passwords can be added and removed without re-encrypting any data.
"""
