"""One package per published method, named after its bundle: the method's own network, loss and inference code.

| bundle | method package | network | loss / training | inference extras |
|---|---|---|---|---|
| ``brain_mri_hybrid_loss`` | ``common.methods.hybrid_loss`` | shared ``common/networks/voxelmorph.py`` | ``loss.py`` (blurred-boundary term) | generic |
| ``brain_mri_joint_affine`` | ``common.methods.joint_affine`` | ``network.py`` | ``engine.py`` | ``engine.py`` (affine refinement, ITK affine file) |
| ``brain_mri_lumir_cascade`` | ``common.methods.lumir_cascade`` | ``network.py`` | generic terms | generic |
| ``brain_mri_prob_diffeo`` | ``common.methods.prob_diffeo`` | ``network.py`` | ``engine.py`` | ``engine.py`` (posterior uncertainty) |
| ``cardiac_cine_ngf_bspline`` | ``common.methods.ngf_bspline`` | ``network.py`` | ``loss.py`` | generic |

What every method uses stays outside: ``common.engines`` (pair batching, :class:`~common.engines.RegistrationLoss`,
the ``PredToDDF`` family, the one instance-optimisation loop, inference I/O and outputs, checkpoints), ``common.losses``
(generic terms), ``common.blocks`` (warping, integration, resizing) and ``common.networks`` (shared U-Net parts).
"""
