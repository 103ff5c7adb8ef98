"""
Cluster mode: several ocm nodes behind one name, sharing only the room
directory (names, owners, LIST figures) through Redis. Rooms never leave the
node that created them. See docs/scaling.md.
"""
