# CI only, never shipped. The common layer of every stand-in: the Debian 12 root file system that .ci/containers
# makes with mmdebstrap (no registry is reachable here), plus this machine's certificate authorities, which its
# HTTPS traffic passes through, so that apt and pip work inside builds.
FROM localhost/workbench-ci-rootfs:bookworm
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["/bin/bash"]
