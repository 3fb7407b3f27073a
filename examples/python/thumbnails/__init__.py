"""A small image pipeline, written as the plain Python functions a
serverless platform would run: ``split`` deals the frames of a raw video
to four ``shrink`` functions, each makes half-size grayscale thumbnails of
its frames, and ``assemble`` puts the thumbnails back in order into one
file.

The functions themselves (:mod:`thumbnails.pipeline`) read and write
file-like objects. :mod:`thumbnails.on_floki` runs them over Floki (each
function streams straight into the next); :mod:`thumbnails.on_s3` runs the
very same functions over an S3 object store with boto3, as Python functions
do today. :mod:`thumbnails.run` is a minimal platform that starts them and
times the whole workflow.
"""
