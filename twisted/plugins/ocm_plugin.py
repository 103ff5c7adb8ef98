from twisted.application.service import ServiceMaker

ocm = ServiceMaker(
    "ocm", "ocm.server.tap", "Online Chat Messenger: chat rooms over TCRP and sealed UDP.", "ocm"
)
