"""The SAM 3 tracker (official: sam3/model/sam3_tracker_base.py and the SAM modules in sam3/sam/).

`tracker.py` assembles it (`Sam3Tracker`: frame features, SAM heads, memory conditioning, memory
encoding, one track step, the fixed-capacity `MemoryBank`) from the SAM prompt encoder
(`prompt_encoder.py`), the two-way transformer (`two_way_transformer.py`), the SAM mask decoder
(`mask_decoder.py`), the memory encoder (`memory_encoder.py`, official `maskmem_backbone`) and the
memory attention (`memory_attention.py`, official `transformer.encoder`), configured as the official
tracker configures them (`model_config(...).tracker`). `instance.py` runs the SAM heads for instance
prompts on one image (the official `Sam3Image.predict_inst`).
"""
