"""The SAM 3 tracker (official: sam3/model/sam3_tracker_base.py and the SAM modules in sam3/sam/).

Built so far: the SAM prompt encoder (`prompt_encoder.py`), the two-way transformer
(`two_way_transformer.py`) and the SAM mask decoder (`mask_decoder.py`), configured as the official
tracker configures them (`model_config(...).tracker`); instance prompts on one image with them
(`instance.py`, the official `Sam3Image.predict_inst`). Memory encoder, memory attention and the
per-frame tracking step come later.
"""
