"""The edge update channel: signed bundle manifests of ONNX versions, their files by digest,
device reports and the fleet they make up."""
