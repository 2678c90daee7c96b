# The trial image: the Ray head and the GPU workers of a sweep on Kubernetes (k8s/,
# docs/kubernetes.md). Ray's own GPU image of the Ray version this project uses (the ray-ml
# images are discontinued), the CUDA build of torch, and this project. From the repository root:
#   docker build -t registry.example/resnet-sweep:0.1.0 .
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py312-cu128

ARG RAY_VERSION
# torch's Linux wheels bring their own CUDA libraries: the base image's CUDA only needs a driver
# new enough for both. Pinned to the versions the project is tested with.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 "ray[tune,client]==${RAY_VERSION}"

COPY --chown=1000:100 . /home/ray/resnet-sweep
RUN pip install --no-cache-dir /home/ray/resnet-sweep \
    && resnet-sweep --help > /dev/null

# The base image's `ray` user (uid 1000, gid 100); the pods run as it too.
USER 1000
WORKDIR /home/ray
