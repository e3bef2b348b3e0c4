# An agent image without labsync-agent: FROM scratch with only the stand-in
# as testflinger-agent and testflinger-server, like an image built from the
# old stack's own Dockerfile. Agents run in it under labsync's default
# command because labsync mounts its labsync-agent at /opt/labsync.
FROM scratch
ENV PATH=/usr/local/bin:/usr/bin:/bin
COPY standin /usr/bin/testflinger-agent
COPY standin /usr/bin/testflinger-server
COPY standin /usr/sbin/mosquitto
CMD ["testflinger-agent", "-c", "/data/testflinger-agent/sut/agent.conf"]
