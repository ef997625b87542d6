#  kiln — one image for every kiln process (kiln-broker, kiln-gateway,
#  kiln-worker and its runners, the kiln CLI). docker-compose.yml runs it
#  once per service.
#
#  docker build -t kiln .
#
#  The worker finds GPUs through the CUDA runtime, which needs the CUDA
#  toolkit at build time. Without it (the default) kiln builds for CPU
#  only and the worker offers CPU slots alone. To build with CUDA, name a
#  toolkit version from NVIDIA's Debian 12 repository:
#
#  docker build --build-arg CUDA_VERSION=12-6 -t kiln .
FROM debian:bookworm

ARG CUDA_VERSION=

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config \
        libzmq3-dev libczmq-dev libhiredis-dev libmsgpack-dev \
        libcurl4-openssl-dev libevent-dev libjansson-dev libpng-dev libsodium-dev \
        redis-server python3 python3-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

#  Optional CUDA toolkit (compiler and runtime only), from NVIDIA's repo.
RUN if [ -n "$CUDA_VERSION" ]; then \
        curl -fsSL -o /tmp/cuda-keyring.deb \
            https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
     && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
     && apt-get update \
     && apt-get install -y --no-install-recommends \
            "cuda-nvcc-$CUDA_VERSION" "cuda-cudart-dev-$CUDA_VERSION" \
     && ln -sfn "/usr/local/cuda-$(echo "$CUDA_VERSION" | tr - .)" /usr/local/cuda \
     && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /src/kiln
COPY . .
RUN rm -rf build build-* \
 && cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build build -j "$(nproc)" \
 && mkdir -p /opt/kiln/bin /opt/kiln/examples \
 && cp build/bin/kiln build/bin/kiln-broker build/bin/kiln-gateway \
       build/bin/kiln-worker build/bin/kiln-runner /opt/kiln/bin/ \
 && cp build/examples/*.so /opt/kiln/examples/ \
 && cp -a include /opt/kiln/include

#  The programs find each other (kiln-runner next to kiln-worker, the
#  examples at bin/../examples) from where they lie.
ENV PATH=/opt/kiln/bin:$PATH \
    KILN_STATE_DIR=/var/lib/kiln
RUN mkdir -p /var/lib/kiln
WORKDIR /var/lib/kiln
EXPOSE 8080 5555
CMD ["kiln", "--help"]
