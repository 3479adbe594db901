#!/usr/bin/env bash
# Generate examples/eo-layout/: a small OCI image layout holding one Earth-observation
# artifact, tagged v1:
#
#   imagery.tif      a 512x512, 3-band (RGB) Cloud-Optimized GeoTIFF in EPSG:32633
#                    (UTM zone 33N, 10 m pixels), DEFLATE-compressed, with one overview
#                    media type: image/tiff; application=geotiff; profile=cloud-optimized
#   stac_item.json   a STAC 1.0.0 Item describing that raster
#                    media type: application/geo+json
#
# The config is the OCI empty descriptor ({}); the manifest carries
# artifactType application/vnd.example.eo.product.v1+json.
#
# The pixels are a synthetic landscape computed here with the Python standard library, so
# the script needs only bash, python3 and the GDAL command line tools (apt: gdal-bin).
# Output is deterministic for a given GDAL version: run it twice and the digests match.
#
# Usage: examples/make-eo-layout.sh [OUTPUT_DIR]      (default: examples/eo-layout)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/eo-layout}"

for tool in python3 gdal_translate gdalinfo; do
    command -v "$tool" >/dev/null || { echo "make-eo-layout: $tool not found (apt-get install gdal-bin python3)" >&2; exit 1; }
done

# Fixed values, so the output does not depend on when or where the script runs.
CREATED="2024-06-01T10:30:00Z"       # manifest annotation and STAC datetime
EPSG=32633                           # WGS 84 / UTM zone 33N
ORIGIN_X=500000                      # upper-left corner, metres
ORIGIN_Y=5800000
PIXEL=10                             # metres
SIZE=512                             # pixels, square

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Raw pixels plus a VRT that gives them a georeference.
python3 - "$work" "$SIZE" "$EPSG" "$ORIGIN_X" "$ORIGIN_Y" "$PIXEL" <<'PY'
import math, sys
work, size, epsg, ox, oy, px = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])

def height(x, y):
    # A smooth "terrain" in [0, 1] from a few sinusoids: hills, a valley, a ridge.
    u, v = x / size, y / size
    h = (0.50
         + 0.22 * math.sin(2 * math.pi * (1.3 * u + 0.4 * v))
         + 0.15 * math.cos(2 * math.pi * (0.7 * u - 1.9 * v))
         + 0.08 * math.sin(2 * math.pi * (3.1 * u + 2.3 * v) + 1.0))
    return min(1.0, max(0.0, h))

def river(x, y):
    # Distance (pixels) to a meandering river running north to south.
    cx = size * (0.42 + 0.08 * math.sin(2 * math.pi * y / size * 1.5))
    return abs(x - cx)

red, green, blue = bytearray(size * size), bytearray(size * size), bytearray(size * size)
for y in range(size):
    for x in range(size):
        h = height(x, y)
        if river(x, y) < 6 or h < 0.18:            # water
            r, g, b = 30, 60 + 40 * h, 110 + 60 * h
        elif h < 0.55:                             # fields and forest
            r, g, b = 50 + 60 * h, 90 + 90 * h, 40 + 30 * h
        elif h < 0.80:                             # bare soil
            r, g, b = 120 + 60 * h, 100 + 40 * h, 70 + 20 * h
        else:                                      # rock
            r, g, b = 170 + 60 * h, 165 + 60 * h, 160 + 60 * h
        i = y * size + x
        red[i], green[i], blue[i] = int(r), int(g), int(b)

with open(f"{work}/pixels.raw", "wb") as f:
    for band in (red, green, blue):
        f.write(band)

bands = []
for n, (name, interp) in enumerate((("red", "Red"), ("green", "Green"), ("blue", "Blue"))):
    bands.append(f"""  <VRTRasterBand dataType="Byte" band="{n + 1}" subClass="VRTRawRasterBand">
    <Description>{name}</Description>
    <ColorInterp>{interp}</ColorInterp>
    <SourceFilename relativeToVRT="1">pixels.raw</SourceFilename>
    <ImageOffset>{n * size * size}</ImageOffset>
    <PixelOffset>1</PixelOffset>
    <LineOffset>{size}</LineOffset>
  </VRTRasterBand>""")
with open(f"{work}/pixels.vrt", "w") as f:
    f.write(f"""<VRTDataset rasterXSize="{size}" rasterYSize="{size}">
  <SRS>EPSG:{epsg}</SRS>
  <GeoTransform>{ox}, {px}, 0, {oy}, 0, {-px}</GeoTransform>
{chr(10).join(bands)}
</VRTDataset>
""")
PY

# 2. The Cloud-Optimized GeoTIFF.
gdal_translate -q -of COG \
    -co COMPRESS=DEFLATE -co PREDICTOR=YES -co LEVEL=9 -co BLOCKSIZE=256 \
    -co OVERVIEWS=AUTO -co OVERVIEW_RESAMPLING=AVERAGE \
    -mo "TITLE=Synthetic EO scene (orasfs example)" \
    "$work/pixels.vrt" "$work/imagery.tif"
gdalinfo -json "$work/imagery.tif" >"$work/gdalinfo.json"

# 3. The STAC item, the blobs, the manifest and the layout.
python3 - "$work" "$out" "$CREATED" "$EPSG" <<'PY'
import hashlib, json, os, shutil, sys
work, out, created, epsg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

info = json.load(open(f"{work}/gdalinfo.json"))
w, h = info["size"]
gt = info["geoTransform"]
ring = [[round(x, 7), round(y, 7)] for x, y in info["wgs84Extent"]["coordinates"][0]]
if ring[0] != ring[-1]:
    ring.append(ring[0])
lons, lats = [p[0] for p in ring], [p[1] for p in ring]
bbox = [min(lons), min(lats), max(lons), max(lats)]

TIFF = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOJSON = "application/geo+json"
stac = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
    "id": "orasfs-example-eo-scene-20240601",
    "bbox": bbox,
    "geometry": {"type": "Polygon", "coordinates": [ring]},
    "properties": {
        "title": "Synthetic EO scene (orasfs example)",
        "description": "A synthetic 3-band RGB scene, 10 m pixels, UTM zone 33N. "
                       "Generated by examples/make-eo-layout.sh; not real observations.",
        "datetime": created,
        "gsd": abs(gt[1]),
        "proj:epsg": epsg,
        "proj:shape": [h, w],
        "proj:transform": [gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]],
    },
    "links": [],
    "assets": {
        "imagery": {
            "href": "./imagery.tif",
            "type": TIFF,
            "title": "RGB imagery (Cloud-Optimized GeoTIFF)",
            "roles": ["data", "visual"],
        }
    },
}
with open(f"{work}/stac_item.json", "w") as f:
    f.write(json.dumps(stac, indent=2) + "\n")

if os.path.isdir(out):
    shutil.rmtree(out)
os.makedirs(f"{out}/blobs/sha256")

def blob(data, media_type, **extra):
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

def layer(name, media_type):
    data = open(f"{work}/{name}", "rb").read()
    return blob(data, media_type, annotations={"org.opencontainers.image.title": name})

ARTIFACT = "application/vnd.example.eo.product.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
manifest = {
    "schemaVersion": 2,
    "mediaType": MANIFEST,
    "artifactType": ARTIFACT,
    "config": blob(b"{}", "application/vnd.oci.empty.v1+json"),
    "layers": [layer("imagery.tif", TIFF), layer("stac_item.json", GEOJSON)],
    "annotations": {
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.description": "Synthetic EO product: a COG and its STAC item",
    },
}
desc = blob((json.dumps(manifest, indent=2) + "\n").encode(), MANIFEST,
            artifactType=ARTIFACT,
            annotations={"org.opencontainers.image.ref.name": "v1"})
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [desc],
}
with open(f"{out}/index.json", "w") as f:
    f.write(json.dumps(index, indent=2) + "\n")
with open(f"{out}/oci-layout", "w") as f:
    f.write(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")
print(f"wrote {out}: v1 -> {desc['digest']}")
PY
