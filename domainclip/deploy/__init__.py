"""Deploy what passed the gate: `domainclip predict` (PyTorch or ONNX Runtime) and
`domainclip export --format onnx [--quantize int8]`.

Modules: `output` (inputs, output rows, provenance sidecar; torch-free), `onnx_runtime` (the
torch-free predictor of an export), `provenance` (a run's task, gate and provenance), `predict`
(the PyTorch predictor), `export` (ONNX graphs + manifest). Nothing is imported here, so
`domainclip.deploy.onnx_runtime` can be imported without torch.
"""
