"""Record the reference embedding that test_embed compares the shipped model against.

Run only after re-exporting the model on purpose: python tests/record_reference.py
"""

from pathlib import Path

import numpy as np

from gridtsne import photo_model
from gridtsne.images import open_image

DATA = Path(__file__).parent / "data"

if __name__ == "__main__":
    model = photo_model.load_model()
    image, _ = open_image(DATA / "chelsea.png")
    vector = photo_model.embed_arrays(model, [photo_model.preprocess(image, model.prep)])[0]
    np.save(DATA / "chelsea_embedding.npy", vector)
    print(f"wrote {DATA / 'chelsea_embedding.npy'}: {vector.shape}, norm {np.linalg.norm(vector):.4f}")
