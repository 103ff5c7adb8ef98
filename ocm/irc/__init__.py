"""
The IRC listener (C{--irc}): every IRC client as an ocm room member, beside
TCRP/UDP and browser members, through the front desk (ocm.server.desk).

names (room and user names as channels and nicks), lines (formatting and
parsing IRC lines), server (one IRC connection), listener (the factory and
the daemon's options).
"""
