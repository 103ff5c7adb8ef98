"""
The chat page and its WebSocket (C{twistd ocm --web}): browser members sit in
the same rooms as C{ocm-client} members, under the same rules.

C{binding} is the JSON codec (pure); C{socket} the WebSocket adapter onto the
room service; C{site} the twisted.web resources (page, headers, Origin);
C{options} the command-line part. Only C{binding} may be imported without
the C{web} extra (autobahn) installed.
"""
