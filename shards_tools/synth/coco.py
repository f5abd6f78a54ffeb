"""COCO 2017 annotation files for the simulated NSD images, in the real COCO JSON format.

NSD images are COCO images cropped to a square (packers match on
`cocoId` + `cocoSplit` and adjust boxes by `cropBox`), so each simulated image gets a COCO identity:
an original width × height, a cropBox (top, bottom, left, right fractions cut away) and boxes in
original pixel coordinates. `instances_*.json` list all 80 real categories with their real ids
(1..90 with gaps) and supercategories, whichever subset the images use; `captions_*.json` hold five
captions per image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COCO_CATEGORIES", "coco_identity", "coco_json"]

# (id, name, supercategory) of the 80 COCO "thing" categories; ids 12 26 29 30 45 66 68 69 71 83 are unused.
_CATEGORY_TABLE = (
    "1:person:person 2:bicycle:vehicle 3:car:vehicle 4:motorcycle:vehicle 5:airplane:vehicle 6:bus:vehicle "
    "7:train:vehicle 8:truck:vehicle 9:boat:vehicle 10:traffic_light:outdoor 11:fire_hydrant:outdoor "
    "13:stop_sign:outdoor 14:parking_meter:outdoor 15:bench:outdoor 16:bird:animal 17:cat:animal "
    "18:dog:animal 19:horse:animal 20:sheep:animal 21:cow:animal 22:elephant:animal 23:bear:animal "
    "24:zebra:animal 25:giraffe:animal 27:backpack:accessory 28:umbrella:accessory 31:handbag:accessory "
    "32:tie:accessory 33:suitcase:accessory 34:frisbee:sports 35:skis:sports 36:snowboard:sports "
    "37:sports_ball:sports 38:kite:sports 39:baseball_bat:sports 40:baseball_glove:sports "
    "41:skateboard:sports 42:surfboard:sports 43:tennis_racket:sports 44:bottle:kitchen "
    "46:wine_glass:kitchen 47:cup:kitchen 48:fork:kitchen 49:knife:kitchen 50:spoon:kitchen 51:bowl:kitchen "
    "52:banana:food 53:apple:food 54:sandwich:food 55:orange:food 56:broccoli:food 57:carrot:food "
    "58:hot_dog:food 59:pizza:food 60:donut:food 61:cake:food 62:chair:furniture 63:couch:furniture "
    "64:potted_plant:furniture 65:bed:furniture 67:dining_table:furniture 70:toilet:furniture "
    "72:tv:electronic 73:laptop:electronic 74:mouse:electronic 75:remote:electronic 76:keyboard:electronic "
    "77:cell_phone:electronic 78:microwave:appliance 79:oven:appliance 80:toaster:appliance "
    "81:sink:appliance 82:refrigerator:appliance 84:book:indoor 85:clock:indoor 86:vase:indoor "
    "87:scissors:indoor 88:teddy_bear:indoor 89:hair_drier:indoor 90:toothbrush:indoor"
)
COCO_CATEGORIES = tuple(
    (int(i), name.replace("_", " "), sup) for i, name, sup in (row.split(":") for row in _CATEGORY_TABLE.split())
)

# Typical COCO original sizes (width, height).
SIZES = ((640, 480), (640, 427), (480, 640), (500, 375), (640, 512), (427, 640))


def coco_identity(n: int, rng: np.random.Generator) -> dict[str, np.ndarray | list]:
    """Per image: unique cocoId, split (~90% train2017), original size, and the square NSD crop as fractions."""
    coco_ids = np.sort(rng.choice(np.arange(1, 581930), n, replace=False))[rng.permutation(n)]
    split = np.where(rng.uniform(size=n) < 0.9, "train2017", "val2017")
    split[rng.integers(0, n)] = "val2017"  # both annotation files always have images
    sizes = np.array([SIZES[i] for i in rng.integers(0, len(SIZES), n)])  # (n, 2) width, height
    crops = []
    for w, h in sizes:
        cut = 1 - min(w, h) / max(w, h)  # fraction of the long side cut away
        a = round(float(cut * rng.uniform(0.2, 0.8)), 7) if cut else 0
        b = round(float(cut - a), 7) if cut else 0
        crops.append((0, 0, a, b) if w > h else (a, b, 0, 0))  # (top, bottom, left, right)
    return {"cocoId": coco_ids, "cocoSplit": split, "size": sizes, "cropBox": crops}


def coco_json(
    identity: dict,
    labels_NK: np.ndarray,
    boxes: list[list[tuple[int, float, float, float, float]]],
    captions: list[list[str]],
    class_ids: list[int],
    split: str,
) -> tuple[dict, dict]:
    """(instances, captions) dicts for the images of one split; boxes are in NSD-crop units, mapped back."""
    info = {"description": "Simulated COCO 2017 subset for an NSD-like cohort", "version": "1.0", "year": 2017}
    licenses = [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}]
    images, inst, caps = [], [], []
    rows = [i for i in range(len(labels_NK)) if identity["cocoSplit"][i] == split]
    for i in sorted(rows, key=lambda i: int(identity["cocoId"][i])):
        cid = int(identity["cocoId"][i])
        w, h = (int(v) for v in identity["size"][i])
        top, bottom, left, right = identity["cropBox"][i]
        images.append(
            {
                "license": 1,
                "file_name": f"{cid:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/{split}/{cid:012d}.jpg",
                "height": h,
                "width": w,
                "date_captured": "2013-11-14 11:18:45",
                "id": cid,
            }
        )
        for k, x0, y0, bw, bh in boxes[i]:
            # crop units -> original pixels: the crop spans (1 - left - right) of the width, etc.
            bx, by = w * (left + x0 * (1 - left - right)), h * (top + y0 * (1 - top - bottom))
            bw, bh = w * bw * (1 - left - right), h * bh * (1 - top - bottom)
            box = [round(v, 2) for v in (bx, by, bw, bh)]
            poly = [box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3], box[0], box[1] + box[3]]
            inst.append(
                {
                    "segmentation": [[round(v, 2) for v in poly]],
                    "area": round(float(np.pi / 4 * bw * bh), 2),
                    "iscrowd": 0,
                    "image_id": cid,
                    "bbox": box,
                    "category_id": class_ids[k],
                    "id": 0,
                }
            )
        caps += [{"image_id": cid, "id": 0, "caption": c} for c in captions[i]]
    first = 900000 if split == "train2017" else 1900000  # distinct annotation ids across files
    for j, a in enumerate(inst):
        a["id"] = first + j
    for j, c in enumerate(caps):
        c["id"] = first + j
    categories = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    instances = {"info": info, "licenses": licenses, "images": images, "annotations": inst, "categories": categories}
    return instances, {"info": info, "licenses": licenses, "images": images, "annotations": caps}
