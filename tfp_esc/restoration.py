"""Image restoration (denoising, inpainting) with learned noise and error bars.

`restore_image` learns the model on the damaged image's own overlapping
patches (blind: no clean data, and without `noise_std` no noise level
either), restores every patch by its posterior and combines the overlaps.

Steps and the choices made (measured in `benchmarks/restoration.py`):

1. Patches: every p x p window (stride 1), as vectors `[N, p^2]`. Each patch
   loses its mean over its observed pixels (the DC, as scikit-learn's
   gallery pipeline does); the model codes what is left.
2. Learning: `tfp_esc.inference.masked_em.fit_masked_em` on a random subset
   of the patches, with the missing pixels masked out of the likelihood.
   The number of atoms matters more than anything else here: with as many
   atoms as pixels (or more) the model explains part of the noise as
   signal and learns too small a noise level (8 x 8 patches of a photograph
   with noise std 0.1: H = 128 learns 0.06 and restores badly); with few
   atoms (H = 16 for 8 x 8) the learned noise is within a few percent of
   the truth, and the ELBO itself prefers the small dictionaries. Hence
   the default `num_latents = p^2 / 4`.
2b. A dictionary per patch class (`num_classes`, default 24). One dictionary
   of 16 atoms is a compromise between smooth regions, edges and texture,
   and its bias on edges and texture is what limited the PSNR (more atoms
   learn part of the noise, step 2). So the patches are split into K
   classes by k-means (scikit-learn's MiniBatchKMeans, fitted on step 2's
   training patches) on the centred patches scaled to unit norm (their
   shape, not their contrast), with their missing pixels filled in by the
   whole image's dictionary (its posterior means, step 4), and each class
   learns its own H atoms by masked EM with sigma^2 held at step 3's
   value, on 1024 of its patches (drawn with replacement where a class has
   fewer: one shape, one compilation). Each patch is restored (step 4)
   with its class's dictionary. Measured (benchmarks/restoration.py's
   photographs, denoising against one dictionary, chelsea / coffee /
   rocket / coins; K classes of T training patches each; float64):
     K = 8, T = 2048: +0.08 / +0.65 / +0.10 / +0.55 dB;
     K = 12, T = 1536: +0.09 / +0.72 / +0.17 / +0.62 dB;
     K = 16, T = 1024: +0.08 / +0.83 / +0.09 / +0.80 dB;
     K = 24, T = 768: +0.08 / +0.95 / -0.01 / +0.96 dB;
     K = 32, T = 512: +0.08 / +0.94 / -0.06 / +1.01 dB;
   and in float32 (the default dtype, below), T = 1024:
     K = 24: +0.10 / +0.99 / -0.04 / +0.98 dB (the default);
     K = 32: +0.13 / +1.03 / -0.14 / +1.08 dB;
   with T = 2048, K = 24: +0.12 / +1.02 / -0.12 / +1.02 dB. Rocket (large
   smooth regions) is best with few classes, the others with many. K = 24
   costs 3-6 s more per image than K = 16 (float32: 22 -> 26 s warm).
   Inpainting (K = 16, float32) with the holes of the k-means features
   filled as above instead of left at 0: +0.11 / +0.24 / -0.06 / +0.27 dB;
   so filled, K = 24 gains a further +0.09 / +0.13 / +0.08 / +0.12 dB
   (unfilled it lost on rocket, -0.39, and coffee, -0.04). Filling the
   observed pixels too (classing on the posterior means alone): -0.05 /
   -0.04 / +0.10 / -0.04 dB. Classing on the global
   dictionary's posterior means instead of the noisy patches in denoising:
   the same within 0.02 dB (chelsea, K = 8). The restoration takes about
   1.5 to 2 times as long as with one dictionary.
2c. Classes chosen by the ELBO (`class_rounds`, default 0). k-means
   (step 2b) classes a patch by its shape with its holes filled by the
   whole image's dictionary; the model itself can say which class
   explains the patch: in each round every patch is restored (step 4,
   held-out pixels of step 5c hidden) under each of its 8 nearest classes'
   dictionaries and moves to the one with the highest ELBO L_n (its own
   c_n lambda and sigma_n^2 at their fitted values;
   `tfp_esc.objective.elbo.classical_elbo` per point), and the classes'
   dictionaries are learned again from their new members. Measured
   (session 26, benchmarks/restoration.py's photographs and masks,
   K = 24, float32; inpainting PSNR chelsea / coffee / rocket / coins),
   2 rounds: 33.13 -> 33.67, 31.81 -> 32.10, 37.21 -> 37.13, 29.03 ->
   29.24 dB, missing-pixel coverage 0.961 / 0.968 / 0.960 / 0.954 (each
   half in its band), 26 -> about 120 s per image (the classes'
   dictionaries learned three times, 16 more posterior passes).
   Chelsea: 4 candidates, 1 round +0.27 dB; 4 candidates, 2 rounds
   +0.39 dB (rocket -0.06); 8 candidates, 4 rounds +0.70 dB; with 32
   atoms instead of 16, 8 candidates, 2 rounds, +0.56 dB (no better).
   Denoising chelsea: +0.03 dB. Not the default: the gain is a quarter
   to a half of a dB where goal 2 asks for 1.1-2.1 more, the time
   4-5 times, rocket loses a little, on the tests' small synthetic scene
   with 8 classes the surer half of the missing pixels covered 1.0, and
   the choice is discrete (float32 and float64 may choose differently
   for a patch whose ELBOs nearly tie).
3. Noise: sigma^2* is the mean squared residual per observed pixel of the
   *centred* patches, whose noise variance is sigma_pix^2 (1 - 1/|m_n|), so
   the reported noise std is sqrt(sigma^2* / mean_n(1 - 1/|m_n|)). With
   `noise_std` given, sigma^2 is held at that (centred) value instead.
4. Per-patch prior scales. One lambda for the whole image is too weak a
   prior in smooth regions (the posterior mean lets noise through there)
   and too strong on texture. So the restoration gives each patch its own
   prior z_nh ~ Laplace(c_n lambda_h), with c_n chosen like lambda* in
   Theorem 2: its ELBO terms -sum_h [log(2 c_n lambda_h) +
   E|z_nh| / (c_n lambda_h)] are maximal at c_n* = (1/H) sum_h
   E|z_nh| / lambda_h. `scale_rounds` rounds alternate c_n = c_n* and one
   warm majorise-minimise iteration of the posteriors, each raising the
   patch's ELBO (type-II maximum likelihood of c_n). Measured: +1.0 dB on a
   photograph with large smooth regions (coffee), +0.1 dB on a textured one
   (chelsea). One iteration per round, not 15: the four photographs of
   benchmarks/restoration.py restore to within 0.02 dB (inpainting rocket
   +0.07 dB) and 0.002 of coverage of what 15 gave, 3.5 to 4 times faster
   (a 256 x 256 denoising 18-21 s instead of 63-77 s): what the rounds
   converge is c_n, and one warm iteration follows each new c_n closely.
   More rounds raise the ELBO further, and the denoising PSNR (150 rounds:
   rocket +0.40, coffee +0.19, coins +0.11, chelsea -0.05 dB), but make
   the error bars too sure (coverage of 95% intervals: coins 0.912 ->
   0.842, chelsea 0.914 -> 0.858): each patch's c_n, fitted to its own 64
   noisy pixels, shrinks on towards an over-confident prior. Ten rounds
   are kept.
   Per-patch posterior of the clean patch: mean mu_n + W nu_n, per-pixel
   variance sum_h W_dh^2 s_nh^2 + sigma_n^2 / |m_n| (the second term is
   the noise of the patch mean mu_n; sigma_n^2 = sigma^2 but in step 4b).
4b. Per-patch misfit, exact observations (`noise_std=0`: inpainting). Then
   sigma^2 is no noise but the model's misfit, and that is far from uniform
   over a photograph: near zero on smooth regions, large on texture. One
   sigma^2 for the whole image gives a missing pixel on a smooth region an
   error bar the size of the texture's misfit (coffee: 99.9% of the 95%
   intervals of the surer half covered). So each patch gets its own
   sigma_n^2, updated with c_n in every scale round: its type-II maximum
   likelihood value E_q ||m_n * (x_n - W z)||^2 / |m_n| (sigma^2* of the
   patch alone), kept between 0.03 sigma^2 and sigma^2. Capped at sigma^2
   because a larger sigma_n^2 in the E-step lets the prior shrink the
   patch's codes, which pulls its missing pixels to the patch mean
   (coffee: -0.44 dB without the cap). Floored because an estimate from
   the few observed pixels of one patch, after its codes have fitted them,
   runs low, and a patch whose sigma_n^2 is too small overfits them. The
   floor was chosen among three measured values (benchmarks/restoration.py's
   images, and the tests' synthetic scene, PSNR against one sigma^2;
   coverage of coffee's surer half): 1e-3: chelsea +0.25, coffee +0.09,
   synthetic -0.57 dB, 0.971; 0.03: +0.25, +0.16, +0.35 dB, 0.987; 0.1:
   +0.24, +0.16, +0.98 dB, 0.992 (goal <= 0.99). A missing pixel's
   variance in window n is then its posterior variance plus sigma_n^2 (the
   pixel itself, W z + e), before the windows are combined, so a window
   that fits its observed pixels badly also counts less. With noise
   (learned or given > 0) sigma^2 is real noise, the same for every pixel,
   and stays one number in the E-step (step 4c instead).
4c. Misfit beyond the noise (noisy observations: denoising). The clean
   patch is W z plus what the H atoms cannot represent (edges, fine
   texture), and the posterior of W z knows nothing of that part: one
   window's estimate on the edges of coffee erred by 1.6 times its
   posterior std. Each window's pixel variances gain
   tau_n^2 = max(0, sigma_n^2* - sigma^2), the patch's misfit sigma_n^2*
   (its own E_q ||m_n * (x_n - W z)||^2 / |m_n|, at the final posteriors)
   beyond the noise; so a window that fits badly also counts less in the
   average of step 5. One window's errors over its variances, E[err^2 / v]:
   coffee 0.85, chelsea 1.24 with tau_n^2 (the PSNR: +0.15 dB on coffee,
   +0.18 dB on coins, +0.01 dB on chelsea, -0.02 dB on rocket). For
   missing pixels (inpainting) the same ratio is 3.2 and 1.9 even with
   step 4b: each window predicts a pixel it never saw.
5. Combining the overlaps (k estimates of each pixel, patch posteriors
   N(mu_k, v_k)): the restored pixel is their precision-weighted average,
   sum_k pi_k mu_k with pi_k = (1 / v_k) / sum_j (1 / v_j), the mean of the
   product of the k Gaussians, so a patch that is sure of the pixel counts
   more than one that is not. Measured against equal weights
   (benchmarks/restoration.py's images): coffee +0.15 dB denoising and
   +0.27 dB inpainting, chelsea unchanged.
   Its variance. With a = sum_k pi_k v_k and the windows' spread
   s = sum_k pi_k (mu_k - mean)^2: if the window errors e_k = mu_k - x have
   E e_k^2 = v_k (calibrated windows, step 4c) then, for any correlation
   between them, E s = a - E (mean - x)^2, so the mean's error variance is
   a - E s: a where the windows err alike (fully correlated), a / k where
   they err independently. A pixel's own s estimates E s from its k
   windows only, so the ratio s / a (1 - the windows' effective error
   correlation) is averaged over the (2p - 1) x (2p - 1) neighbourhood
   that the pixel's windows span, and the variance is
   a max(1 - box(s / a), 1 / k).
   Observed pixels get that. It replaced the mixture of the k posteriors,
   a + s, which treats the restored pixel as one window's estimate drawn at
   random and covered too much where the windows agree (denoising,
   coverage of 95% intervals overall / surer half / less sure half, the
   mixture -> this: coffee 0.978/0.995/0.960 -> 0.962/0.986/0.938, chelsea
   0.937/0.927/0.946 -> 0.914/0.905/0.924, and on two photographs not used
   to choose the rule, rocket 0.991/0.999/0.984 -> 0.987/0.996/0.979,
   coins 0.936/0.979/0.893 -> 0.912/0.965/0.859; rank correlation of std
   and error: coffee 0.45 -> 0.39, chelsea 0.16 -> 0.20, rocket 0.38 ->
   0.29, coins 0.51 -> 0.50. Without the box average the rank correlation
   fell further (coffee 0.28); a p x p box, tried first, gave 0.38 /
   0.19 / 0.28 / 0.49 and left coins' less sure half at 0.850 (the box
   size was settled after all four images had been seen). Without
   tau_n^2 (step 4c) coffee covered 0.90, coins 0.81). Rocket still
   over-covers because its single windows do: their squared errors are
   0.53 of their variances. On its surer half (the smooth sky; K = 24)
   one window's squared error is 0.60 of its step-5b variance and 0.73
   of its own, most of which is the posterior variance of W z (5.4e-4 of
   7.9e-4 per pixel, against a squared error of 5.8e-4). The rule above
   is not what fails there: the mean's squared error is 0.225 a, and
   windows scaled to their true errors would give 0.23 a. For a linear
   estimator whose sensitivity to the data is W S W^T / sigma^2 (S the
   posterior covariance), the window's variance (posterior variance +
   sigma^2 / |m_n| + tau_n^2) is close to Stein's unbiased estimate of
   its squared error; the Laplace prior's shrinkage makes the posterior
   mean less sensitive than that where codes are near zero (smooth
   patches), so there the variance over-states the error. Left as it
   is: the true sensitivity would take a second, perturbed posterior
   pass (Monte-Carlo SURE); probed, Stein's estimate subtracts D sigma^2
   from a window's squared residual, so a learned sigma off by a few
   percent moves it by more than the error it estimates (coins, sigma
   +9.4%: 0.06 against a true 0.18 per window); on rocket (sigma -1.8%)
   it ran low too, 0.045 against 0.074 (perturbations of 0.005 and
   0.02 alike). Blind, it cannot be used.
   Nor is it the mean-field covariance: linear-response covariances of
   the codes (the full precision W^T W / sigma^2 + diag(1/s^2 -
   diag(W^T W) / sigma^2)) give the same variance of W z to 0.3% (a
   class's atoms are nearly orthogonal). By window, rocket's own
   variances over-state the squared error by 1 / 0.86, and step 5b
   widens them further (1 / 0.66): without 5b rocket covers 0.968 /
   0.986 / 0.951, but chelsea 0.814 and coins 0.855 (5b with weights
   3/4 and 1/4: rocket 0.981, chelsea 0.863). tau_n^2 is not the cause: without it rocket
   covers 0.970 / 0.992 / 0.949 (the surer half still over) and coffee
   0.934, coins 0.878, chelsea 0.834, with -0.03 to -0.30 dB; pooling
   sigma_n^2* over 3 x 3 to 8 x 8 neighbouring windows before
   subtracting sigma^2 leaves rocket at 0.988-0.989 and costs coffee
   0.17-0.20 dB, coins 0.12-0.14 dB. Missing pixels keep
   the mixture unless their windows are calibrated (step 5c): a window
   predicts a pixel it never saw, its variance does not say how well
   (step 4c), and with the raw windows a - s covered 0.75 of coffee's
   missing pixels. The product's own variance
   1 / sum_k (1 / v_k) (independent windows) is far too confident
   (about 20% coverage).

5b. Error bars with patch classes. The class dictionaries fit their noisy
   patches more closely than they fit the clean ones: a window's squared
   error grew (chelsea 16.1 -> 17.6 e-4 per pixel) while its variance
   fell (18.5 -> 17.9 e-4), and the combined error bars were too sure
   (K = 8: coverage of 95% intervals chelsea 0.880 overall, coins' less
   sure half 0.821). Which of the two models (the whole image's dictionary, step 2,
   or the class's) describes a patch is itself uncertain, so each window's
   variance is the error variance of its class estimate m_c when the clean
   patch is equally likely drawn from either model's posterior,
   N(m_c, v_c) or N(m_g, v_g): (v_c + v_g + (m_c - m_g)^2) / 2
   (`error_variance_of_either`), and step 5 combines those. The restored
   image stays the precision-weighted mean of the class estimates with
   their own variances (weights from the mixture variances: coffee -0.14,
   coins -0.07 dB; K = 8); the spread of step 5 is taken about that
   mean. Measured, K = 24, float32: coverage overall / surer half / less
   sure half chelsea 0.906 / 0.895 / 0.917, coffee 0.971 / 0.983 /
   0.958, coins 0.938 / 0.963 / 0.913 (all in their bands), rocket 0.989 /
   0.996 / 0.982 (over-covers, as with one dictionary: 0.987). It costs a
   second posterior pass (the whole image's dictionary). Using the average
   of the two estimates instead of m_c (Bayesian model averaging):
   coffee -0.33, coins -0.25 dB (K = 8). The weights 1/2 were not
   tuned; the disagreement alone, (m_c - m_g)^2 added to v_c, over-covered
   (chelsea 0.923). Only where the observations are noisy: with exact
   ones (inpainting) there is no noise to fit, each patch's misfit
   (step 4b) is measured on exact pixels, and the missing pixels' mixture
   variance (step 5) already holds the windows' disagreement; there step
   5b made the error bars of the missing pixels wider than their errors
   (K = 24, coverage overall chelsea 0.973 -> 0.980, coffee 0.984 ->
   0.987, rocket 0.975 -> 0.981, coins 0.962 -> 0.975).

5c. Missing pixels with exact observations (inpainting): windows calibrated
   on held-out pixels. A window's variance of a pixel it did not see
   (posterior variance + sigma_n^2, step 4b) under-states its error, and
   the more so the nearer the pixel lies to the window's border: its
   squared error over its variance, at the missing pixels (measured with
   the clean images, K = 24), was 1.7 in the centre and 2.9 in the
   corners on chelsea, 5.5 and 11 on coffee, 16 and 29 on rocket, 2.4
   and 4.7 on coins (sigma_n^2 is fitted on the pixels the codes were
   fitted to). In inpainting the observed pixels are exact, so those
   ratios can be measured without the clean image. 1/8 of the image's
   observed pixels, drawn at random, are held out: hidden from the
   dictionaries' learning (steps 2 and 2b learn from the other 7/8,
   centred on them) and, in one more posterior pass, from every window
   that covers them; f_d = sum e^2 / sum v over the hidden pixels at
   position d of the window, pooled over the 8 symmetries of the square
   (`window_error_factors`). Hidden from the learning too because a
   dictionary predicts a pixel it was fitted to better than one it never
   saw: when only the extra pass hid them (session 23), the factors fell
   short of the missing pixels' errors the more, the fewer windows a
   class's dictionary learned from, and on small images the missing
   pixels' coverage collapsed (K = 24, chelsea / coffee / rocket / coins:
   64 x 64 crops 0.19 / 0.43 / 0.50 / 0.24, now 0.92 / 0.99 / 0.97 /
   0.97; 128 x 128 crops 0.87 / 0.45 / 0.63 / 0.75, now 0.94 / 0.99 /
   0.98 / 0.95; inpainting PSNR at 64 x 64 -0.06 / +0.36 / +0.24 /
   +0.39 dB, at 128 x 128 -0.11 / +0.34 / +0.51 / -0.05 dB). At 256 x
   256 (benchmarks/restoration.py, s23 -> s24) the factors (centre /
   corner) rose from 1.65 / 2.5, 3.9 / 8.5, 10 / 17, 2.2 / 3.7 to 1.74 /
   2.78, 5.4 / 10.4, 15.5 / 28.2, 2.6 / 4.5: the clean images' ratios
   above to within 10%, measured without them. The coverage rose with
   them, 0.941 / 0.935 / 0.932 / 0.932 -> 0.953 / 0.972 / 0.990 / 0.955,
   and the smooth photographs' surer half over-covered (coffee 0.997,
   rocket 1.000; band 0.85-0.99; mended by pixel, below);
   the rank correlation of std and error is unchanged (0.53 / 0.61 /
   0.47 / 0.63). The price of learning from 7/8 of the pixels: PSNR
   33.26 / 32.01 / 36.96 / 29.16 -> 33.13 / 31.79 / 37.18 / 29.02 dB
   (-0.13 / -0.22 / +0.22 / -0.14; rocket now +2.01 over biharmonic
   inpainting). Tried instead: a
   second set of dictionaries learned without the held-out pixels, used
   for the factors only (the restoration's learning from every observed
   pixel, its PSNR kept): 64 x 64 coverage 0.80 / 0.98 / 0.94 / 0.81
   (the factors of dictionaries fitted to fewer pixels do not carry over),
   and twice the learning. Holding out 1/16 instead of 1/8: 64 x 64
   coverage 0.88 / 0.91 / 0.96 / 0.89 (noisier factors), 256 x 256
   chelsea / coffee +0.05 / +0.06 dB.
   Every window's variances are multiplied by f (which also weighs the
   centre of a window above its corners in step 5), and a missing
   pixel's variance is the variance of the mean of step 5 with the
   windows' effective error correlation pooled over every missing pixel
   of the image: a max(1 - sum s / sum a, 1 / k). Pooled over the box of
   step 5 instead, the factor 1 - box(s / a) ran against the errors
   (where windows disagree more than their variances say, they err
   more): the rank correlation of std and error fell (coffee 0.60 ->
   0.38, rocket 0.47 -> 0.19). Measured against the mixture of step 5
   (session 23, the held-out pixels hidden from the extra pass only;
   K = 24, chelsea / coffee / rocket / coins): coverage of the missing
   pixels' 95% intervals overall 0.973 / 0.983 / 0.974 / 0.963 ->
   0.941 / 0.935 / 0.932 / 0.932, surer half 0.985 / 0.989 / 0.980 /
   0.964 -> 0.975 / 0.981 / 0.980 / 0.967, less sure half 0.960 / 0.978
   / 0.968 / 0.961 -> 0.907 / 0.888 / 0.883 / 0.897 (all in their
   bands; coffee's 0.983 was not); rank correlation 0.52 / 0.60 / 0.47 /
   0.64 -> 0.53 / 0.61 / 0.46 / 0.63; PSNR +0.01 / +0.13 / -0.01 /
   +0.09 dB (the weights); about 4 s more per image. The errors are
   heavy-tailed: the intervals cover 95% while a few pixels (edges) err
   far beyond them, so the mean squared error exceeds the mean variance
   (the tests' synthetic scene: 3.7 times, coverage 0.98).
   The surer half's over-coverage on smooth photographs is not the
   factors' position profile: one window's squared error over its
   calibrated variance at the missing pixels of rocket is 0.05 for the
   windows below the median variance and 1.06 above it (f, a ratio of
   sums, is set by the larger variances). Probed, not adopted: a factor
   per class times f (rocket 0.984 / 0.999 / 0.968, unchanged); a factor
   per eighth of the calibrated variances (held-out ratios 0.07-1.5 on
   coffee, 0.07-1.3 on rocket): rocket 0.969 / 0.968 / 0.970, but coffee
   0.860 / 0.839 / 0.880, and 0.574 with those variances in the weights
   too (-0.29 dB).
   Then by pixel (session 25): the held-out pixels are restored as the
   missing ones are (step 5 on the extra pass, with them counted as
   missing and the windows' variances scaled by f), and their squared
   errors over their restored variances V give a factor per bin of V
   (`variance_error_factors`: up to 8 bins of equal count, each of at
   least 32 held-out pixels, g_b = sum e^2 / sum V), by which every
   missing pixel's variance is scaled, log g interpolated in log V
   (`scale_by_variance`; `RestorationResult.variance_factors`). This
   calibrates what is measured, the restored pixel, where the factors
   above calibrate its windows; the smooth regions' pixels get factors of
   0.1-0.2 (rocket 0.09-0.10 below the median variance, coffee 0.15-0.36),
   the least sure 1.5-3.6. The restored image is unchanged. Measured
   (benchmarks/restoration.py's photographs and masks, K = 24, float32;
   chelsea / coffee / rocket / coins; overall / surer half / less sure
   half), before -> after: 0.953 / 0.981 / 0.925 -> 0.951 / 0.952 /
   0.950, 0.969 / 0.995 / 0.942 -> 0.956 / 0.953 / 0.960, 0.988 / 1.000 /
   0.976 -> 0.959 / 0.951 / 0.967, 0.955 / 0.981 / 0.928 -> 0.941 /
   0.929 / 0.953 (every band met); rank correlation of std and error
   unchanged (0.53 / 0.61 / 0.47 / 0.63). 4 or 16 bins instead of 8:
   within 0.005 of these. One bin (a single pooled factor, 1.1-1.9)
   over-covers (0.962 / 0.985 / 0.990 / 0.971): its ratio of sums is set
   by the few large errors of the heavy tail, which binning keeps among
   the least sure pixels. A conformal variant (per bin, the 95% quantile
   of e^2 / V over 1.96^2) gave 0.954 / 0.963 / 0.962 / 0.951, no better,
   and would make the std a scale for 95% intervals only. 128 x 128 crops:
   0.938 / 0.973 / 0.902 -> 0.951 / 0.958 / 0.944, 0.966 / 0.995 / 0.938
   -> 0.970 / 0.970 / 0.971, 0.985 / 1.000 / 0.970 -> 0.987 / 0.989 /
   0.985, 0.957 / 0.983 / 0.930 -> 0.955 / 0.944 / 0.966. 64 x 64 crops
   (8 bins of 32 pixels) over-cover: 0.914 / 0.994 / 0.972 / 0.973 ->
   0.965 / 0.994 / 0.989 / 0.993 overall (a bin's ratio of sums is set by
   one large error; bins of 64 pixels: 0.959 / 0.994 / 0.990 / 0.997).
   Applied to the windows instead (a factor per bin of the windows'
   variances, above) the factors changed the weights and the pooled
   correlation of step 5 at once, and coffee under-covered.
   Noisy observations with missing pixels keep the mixture a + s for the
   missing pixels: it over-covers them (benchmarks/restoration.py's noisy
   inpainting, 256 x 256: 0.981 / 0.993 / 0.996 / 0.980), and nothing
   measured does better blind. Step 5's rule for observed pixels (the
   box of s / a) covered 0.890 / 0.951 / 0.981 / 0.902 (coins' less
   sure half 0.847), pooled over the missing pixels 0.859 / 0.911 /
   0.980 / 0.838. Held-out noisy pixels (factors from (e^2 - sigma^2) /
   v, the windows' own variances scaled by them at their missing
   pixels): with the held-out pixels hidden from the extra pass only,
   factors far below the missing pixels' (chelsea 0.7-1.0 against 1.6;
   the dictionaries had fitted part of those pixels' noise) and coverage
   0.18-0.33; hidden from the learning too, 0.734 / 0.848 / 0.954 /
   0.652: the learned sigma^2, off by 2-10%, moves e^2 - sigma^2 by as
   much as the error it measures (coins, sigma +9.5%, worst). By pixel as
   above (session 25; the held-out pixels hidden from the windows, factors
   max(sum (m - y)^2 - n sigma^2, 0.05 sum V) / sum V per bin of V): the
   factors ran from the floor to 29 and the coverage 0.907 / 0.999 /
   0.931 / 1.000 (chelsea's surer half 0.835).

Also measured, not adopted (denoising PSNR against the defaults above on
benchmarks/restoration.py's photographs chelsea, coffee, rocket, coins,
noise std 0.1; coverage as in step 5):
- Patch classes (step 2b) as first probed (session 20): the classes'
  training patches up to 8192 each, error bars from the class estimates
  alone: +0.09, +0.63, +0.01, +0.56 dB, but chelsea covered 0.891 and
  coins' less sure half 0.834, in 127-187 s per image (8 compilations).
  With 2048 each, one compilation, no step 5b: chelsea +0.08,
  coffee +0.65 dB, chelsea covered 0.880. 4 classes so: chelsea +0.02,
  coffee +0.31 dB, chelsea 0.900.
- Non-local prior scales, borrowing strength from similar patches as
  self-similarity methods do: each patch's 16 most similar windows within
  +-7 pixels (centred distance), and in every scale round a prior scale per
  patch and atom, the group's mean of E|z_mh| / lambda_h. +0.18, +0.03,
  +0.14, +0.06 dB (inpainting chelsea +0.13, coffee +0.05), but coins'
  less sure half covered 0.837 (band: 0.85) and the rank correlation fell
  (coffee 0.39 -> 0.34, rocket 0.29 -> 0.21); 30 rounds: rocket +0.33,
  coins 0.819. The group's mean as one c_n: -0.02, -0.14 dB at 10
  rounds; at 60 rounds -0.04, -0.13, +0.44, -0.02 dB, rocket's coverage
  0.982 / 0.992 / 0.973 (nearer its bands), coins' 0.862 / 0.904 / 0.820
  (out of them): pooled or not, a c_n that converges helps the smooth
  photograph and makes the textured ones' error bars too sure. The patch's
  own c_n times the group's profile over atoms: +0.15, +0.09, -0.04,
  +0.09 dB, coins 0.841. Small gains, paid in calibration.
- Averaging the posterior means of each window's 4 most similar windows
  (NL-means on our estimates) before step 5: -0.13 dB on chelsea and
  coffee (8 windows: -0.30, -0.54): our windows' errors are mostly the
  patch model's bias, which similar windows share.
- Inpainting, what the Laplace model leaves: a Gaussian per class
  instead (PLE, Yu, Sapiro and Mallat 2012; a NumPy probe, not in the
  library): 24 classes of 8 x 8 windows with full 64 x 64 covariances
  estimated from the current estimate, each window's missing pixels the
  Gaussian conditional mean given its observed ones under the class with
  the highest likelihood of those, windows averaged, three iterations
  from scikit-image's biharmonic fill: chelsea 34.61 dB (biharmonic
  33.20, ours 33.13; 370 s in NumPy). Classed by k-means instead of the
  likelihood: 33.72. Each class's covariance cut to its top 16
  directions plus an isotropic rest (probabilistic PCA, the rank of our
  dictionaries): 33.80, about ours with step 2c (33.67). Kriging our windows' residuals at their observed
  pixels into their missing ones with a residual covariance per class:
  +0.07 dB. So the choice of class by the model's own evidence (step 2c)
  and a full covariance per class are what such a model has over ours
  (+0.8 dB from the rank here); with 32 atoms per class ours did not
  gain, so a Laplace dictionary learned from half-observed windows does
  not capture the small directions the full covariance holds.
- Half-quadratic splitting (EPLL): re-restore the patches of
  x = (y + m zbar) / (1 + m) with noise sigma^2 / m, m = 1, 4, 8, 16:
  chelsea unchanged, coffee -0.28 dB, and the error bars lose their
  meaning (coverage 0.33-0.44).
- Learning the dictionary under per-patch scales too (c_n* and
  lambda* = mean_n E|z_nh| / c_n in every masked-EM E-step): -0.00,
  +0.02 dB. The dictionary is not what limits the PSNR.
- Other numbers of atoms, blind, with steps 3-5 as they are: H = 12 / 24 /
  32: chelsea -0.08 / +0.02 / -0.09, coffee -0.23 / +0.14 / +0.04, rocket
  +0.08 / -0.29 / -0.90, coins -0.33 / +0.36 / +0.52 dB. The learned noise
  std falls as H grows (coins 0.112 / 0.105 / 0.102 against 0.109 at
  H = 16; rocket 0.099 / 0.096 / 0.093 against 0.098) and the coverage
  rises (rocket 0.991-0.992). No H is best on every photograph, and the
  masked-EM ELBO would not find the best one per image: it prefers H = 12
  on chelsea and rocket, 16 on coffee, 16 or 20 on coins.
- More atoms for inpainting, where exact observations leave no noise for
  them to learn (K = 24, float32): H = 24: +0.12 / -0.03 / -0.05 /
  +0.02 dB; H = 32: +0.12 / -0.05 / -0.35 / +0.03 dB.
- Patch sizes, with H = p^2 / 4: p = 6: -0.08, +0.04 dB (inpainting
  +0.02, -0.16); p = 10: +0.01, -0.10 dB at about twice the time; p = 12
  (H = 24): -0.13, -0.62 dB.
- Inpainting, a second pass in which each window sees its neighbours'
  estimates of its missing pixels: the restored image there, as
  observations of variance v (step 5's), each weighted
  sigma_n^2 / (sigma_n^2 + v) in the likelihood (through the mask, whose
  entries may lie in [0, 1]); K = 24: chelsea -0.06, coffee -0.10 dB
  (two such passes: -0.09, -0.13), and the missing pixels' coverage fell
  (chelsea 0.973 -> 0.938). Step 5 has already averaged the windows'
  estimates; feeding the average back to them adds nothing.
- Missing pixels' error bars from windows corrected for fitting their own
  pixels: sigma_n^2 is measured on the observed pixels the codes were
  fitted to, and a pixel the window never saw errs by more, about
  (|m_n| / (|m_n| - d_n))^2 times (generalised cross-validation; d_n =
  sum_h s_nh^2 ||m_n * w_h||^2 / sigma_n^2, the codes' effective degrees
  of freedom: 11 of 32 observed pixels on chelsea, 9 on coffee). One
  window's E[err^2 / v] at its missing pixels fell from 1.81 to 0.79
  (chelsea) and from 3.17 to 1.41 (coffee, with sigma_n^2* uncapped).
  Combined as observed pixels are (the variance of the mean, step 5,
  weights from these variances) the missing pixels' coverage went
  chelsea 0.973 -> 0.981, coffee 0.983 -> 0.934, and coffee lost 0.46 dB
  (with the capped sigma_n^2: 0.968, 0.886, -0.19 dB); kept in step 5's
  mixture, 0.993 and 0.986.
- A fixed spatial weight in step 5 (each window's precisions times a
  Gaussian of the pixel's distance from the window's centre, std g
  pixels; K = 24, before step 5c): inpainting g = 3: +0.02 / +0.18 /
  -0.02 / +0.18 dB, g = 2: +0.02 / +0.27 / -0.08 / +0.29 dB (coverage
  down by up to 0.008); denoising g = 3: +0.01 / -0.01 / -0.07 / -0.01
  dB. Step 5c's measured factors weigh the window's centre too (+0.01 /
  +0.13 / -0.01 / +0.09 dB); a sharper fixed profile was not adopted for
  a gain that varies by image and a width chosen on the test images.
- Inpainting around a smooth interpolant (session 31, a probe with the
  library unchanged): the model restores the residual x - b at the
  observed pixels, b = scikit-image's biharmonic fill blurred by a
  Gaussian of std g pixels, and the estimate is b plus the restored
  residual. Chelsea g = 0.5 / 0.7 / 1 / 1.5 / 3: +0.23 / +0.36 / +0.38 /
  +0.38 / +0.13 dB against ours (33.13), coffee g = 0.7 / 1.5: -0.33 /
  +0.13 dB (31.81); the missing pixels' coverage fell (chelsea 0.48 /
  0.75 / 0.86 / 0.92 / 0.94; b's own error is in no variance). And the
  plain average a ours + (1 - a) biharmonic: the two errors at the
  missing pixels correlate 0.90 / 0.85 / 0.70 / 0.84 (chelsea / coffee /
  rocket / coins), so a = 0.5 gains +0.20 / +0.56 / +1.66 / +0.85 dB over
  biharmonic, against ours alone -0.07 / +0.44 / +2.07 / +1.02 (a = 0.7:
  +0.15 / +0.59 / +2.03 / +1.02). Neither comes near the goal's +2 dB on
  chelsea, and both lose the error bars' meaning.
- Inpainting with more work per patch (K = 24): 30 scale rounds instead
  of 10: +0.04 / +0.11 / -0.11 / +0.02 dB (chelsea / coffee / rocket /
  coins), 100: +0.05 / +0.04 dB (chelsea, coffee) at 1.5 times the time;
  90 E-step iterations instead of 30: +0.00 / +0.02 dB. The coverage
  moved by 0.002 at most.

Dtype: the model's computations (steps 2-4) run in float32 by default;
the combination (step 5) and the results are float64. On
benchmarks/restoration.py's four photographs (K = 16) float32 restored to
the PSNR of float64 within 0.012 dB (denoising chelsea / coffee / rocket /
coins 28.693 / 29.875 / 33.197 / 27.300 against 28.693 / 29.875 / 33.197 /
27.301; inpainting 33.046 / 31.516 / 37.080 / 28.659 against 33.046 /
31.528 / 37.083 / 28.660) with the same coverage to 0.001, and 2.4 times
as fast (coffee denoising 53 -> 22 s warm, 74 -> 47 s with the
compilations): the E-steps' cost is elementwise erf/exp/log work, and the
CPU's vector units do twice as many float32 numbers at once.

Compilation: the masked-EM iteration (for step 2's training patches and
for the classes' 1024) and the posterior step (one with and one without
per-patch misfits, on chunks of 2048 patches whatever the dictionary) are
each compiled (XLA) once per process and shape, with every value an
argument, so a second restoration of an image of the same size (another
image, or inpainting after denoising) skips the compilation.

Shapes: images `[rows, cols]` float in [0, 1] (values far outside refused);
masks `[rows, cols]` bool with true = observed (the library's convention;
the script's `--mask` marks missing pixels and is inverted there).
"""

import dataclasses
import functools
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from scipy import ndimage
from sklearn import cluster
from skimage.metrics import peak_signal_noise_ratio
from sklearn.feature_extraction.image import reconstruct_from_patches_2d

from tfp_esc import _checks
from tfp_esc.inference._training import RELATIVE_SCALE_FLOOR
from tfp_esc.inference.masked_em import fit_masked_em
from tfp_esc.inference.mm import mm_e_step
from tfp_esc.objective import elbo as elbo_lib
from tfp_esc.objective.special import expected_magnitude
from tfp_esc.posterior.gaussian import DiagonalGaussian

__all__ = [
  'RestorationResult',
  'combine_patches',
  'combine_posteriors',
  'image_to_patches',
  'psnr',
  'interval_coverage',
  'restore_image',
  'scale_by_variance',
  'variance_error_factors',
  'window_counts',
  'window_error_factors',
]

# Pixel values accepted as an image in [0, 1] (noise pushes them out a bit).
_VALUE_RANGE = (-1.0, 2.0)
# Patches per compiled posterior step (the last chunk of a class padded).
_CHUNK = 2048
# Training patches per class (step 2b).
_CLASS_TRAIN_PATCHES = 1024
# Per-patch prior scales (module doc, step 4): E-step iterations per round,
# and the smallest c_n (a patch of pure noise drives c_n* down slowly but
# without end; 1e-3 of lambda is far below any structure).
_SCALE_ROUND_ITERATIONS = 1
_MIN_PATCH_SCALE = 1e-3
# Per-patch misfit (step 4b): the smallest sigma_n^2, relative to sigma^2.
_MIN_PATCH_NOISE = 0.03
# Step 5c: the share of each window's observed pixels hidden from it to
# measure its errors at pixels it did not see.
_HELD_OUT_SHARE = 0.125
# Step 5c, by pixel: at most this many bins of the restored variance, each
# of at least _MIN_BIN_PIXELS held-out pixels.
_VARIANCE_BINS = 8
# Step 2c: the classes a patch may move to.
_CLASS_CANDIDATES = 8
_MIN_BIN_PIXELS = 32


@dataclasses.dataclass
class RestorationResult:
  """What `restore_image` returns.

  Attributes:
    restored: `[rows, cols]` float64 posterior-mean image.
    uncertainty: `[rows, cols]` float64 posterior standard deviation of each
      clean pixel (module doc, step 5).
    noise_std: float, the per-pixel noise std (learned, or the one given).
    model_noise_std: float, the per-pixel std of the model's sigma^2 (equal
      to noise_std unless noise_std = 0 was given).
    noise_learned: bool.
    dictionary: `[p^2, H]` the unit-norm atoms learned on the whole image
      (step 2).
    class_dictionaries: `[K, p^2, H]` the atoms of each patch class (step
      2b); `dictionary[None]` when num_classes = 1.
    patch_classes: `[N]` int64, each patch's class (index into
      class_dictionaries), patches in `image_to_patches` order.
    history: dict of lists from the masked EM ('elbo', 'noise_variance').
    patch_scales: `[N]` the per-patch prior scales c_n (module doc, step 4)
      under each patch's own class dictionary, patches in
      `image_to_patches` order.
    patch_noise_std: `[N]` float64 per-patch std of the model's per-pixel
      sigma_n^2 (module doc, step 4b) under each patch's class dictionary:
      model_noise_std for every patch unless noise_std = 0 was given.
    error_factors: `[p, p]` float64, the windows' squared errors over their
      variances at held-out observed pixels, by position in the window
      (module doc, step 5c), by which the missing pixels' window variances
      were scaled; None unless noise_std = 0 and some pixel is missing.
    variance_factors: `[B, 2]` float64 rows (variance, factor): the
      restored held-out pixels' squared errors over their variances in B
      bins of the variance (the bin's geometric mean variance, then the
      factor), by which the missing pixels' variances were scaled
      (`scale_by_variance`; module doc, step 5c); None when error_factors
      is.
    seconds: float, wall-clock seconds of the whole restoration.
  """
  restored: np.ndarray
  uncertainty: np.ndarray
  noise_std: float
  model_noise_std: float
  noise_learned: bool
  dictionary: np.ndarray
  class_dictionaries: np.ndarray
  patch_classes: np.ndarray
  history: dict
  patch_scales: np.ndarray
  patch_noise_std: np.ndarray
  error_factors: np.ndarray | None
  variance_factors: np.ndarray | None
  seconds: float


def image_to_patches(image, patch_size):
  """Every `patch_size` x `patch_size` window (stride 1) as a row.

  Args:
    image: `[rows, cols]` array.
    patch_size: p, an integer in [2, min(rows, cols)].

  Returns:
    `[(rows - p + 1) (cols - p + 1), p^2]` array, windows in row-major order.
  """
  windows = np.lib.stride_tricks.sliding_window_view(
      image, (patch_size, patch_size))
  return windows.reshape(-1, patch_size * patch_size)


def combine_patches(values, image_shape, patch_size):
  """Average of the overlapping patch values at each pixel.

  Args:
    values: `[N, p^2]` values of the windows of `image_to_patches`.
    image_shape: (rows, cols).
    patch_size: p.

  Returns:
    `[rows, cols]` float64 mean over the windows covering each pixel
    (scikit-learn's `reconstruct_from_patches_2d`).
  """
  windows = np.asarray(values, np.float64).reshape(-1, patch_size,
                                                   patch_size)
  return reconstruct_from_patches_2d(windows, tuple(image_shape))


def window_counts(image_shape, patch_size):
  """`[rows, cols]` float64: how many p x p windows (stride 1) cover each
  pixel."""

  def along(n):
    i = np.arange(n)
    return np.minimum.reduce([i + 1, np.full(n, patch_size), n - i,
                              np.full(n, n - patch_size + 1)])

  rows, cols = image_shape
  return np.outer(along(rows), along(cols)).astype(np.float64)


def combine_posteriors(means, variances, image_shape, patch_size,
                       observed=None, weight_variances=None,
                       calibrated=False):
  """Precision-weighted mean of the patch posteriors, and its variance.

  At a pixel covered by k windows with posterior means mu_k and variances
  v_k > 0, with weights pi_k = (1 / u_k) / sum_j (1 / u_j) (u_k = v_k
  unless `weight_variances` are given): mean = sum_k pi_k mu_k. With the
  windows' average variance a = sum_k pi_k v_k and their spread
  s = sum_k pi_k (mu_k - mean)^2 (module doc, steps 5, 5b and 5c):

    observed pixel: a * max(1 - box(s / a), 1 / k), the variance of the
      mean (box: the average over the (2p - 1) x (2p - 1) neighbourhood
      that the pixel's windows span);
    missing pixel: a + s, the variance of the mixture with weights pi;
      with `calibrated`, the variance of the mean too, its ratio pooled
      over every missing pixel: a max(1 - sum s / sum a, 1 / k).

  With equal v_k the mean is the plain average.

  Args:
    means, variances: `[N, p^2]` per-window posterior means and variances
      (> 0) of the pixels.
    image_shape: (rows, cols).
    patch_size: p.
    observed: optional `[rows, cols]` bool, true where the pixel was
      observed (default: every pixel).
    weight_variances: optional `[N, p^2]` variances u_k (> 0) that set the
      weights instead of `variances` (step 5b: the class estimates' own
      variances weigh, the error variances of `error_variance_of_either`
      are combined).
    calibrated: True where the windows' variances of the missing pixels
      are their error variances too (step 5c: scaled by held-out errors).

  Returns:
    (mean, variance): `[rows, cols]` float64 each.
  """
  variances = np.asarray(variances, np.float64)
  precision = 1.0 / (variances if weight_variances is None
                     else np.asarray(weight_variances, np.float64))
  means = np.asarray(means, np.float64)
  # combine_patches averages over the windows, so every ratio below is a
  # ratio of sums: (sum_k w_k a_k) / (sum_k w_k).
  total = combine_patches(precision, image_shape, patch_size)

  def weighted(values):
    return combine_patches(precision * values, image_shape, patch_size) / total

  mean = weighted(means)
  # sum_k pi_k v_k (= k / sum_k (1 / v_k) = 1 / total where u = v).
  average = (1.0 / total if weight_variances is None
             else weighted(variances))
  spread = np.maximum(weighted(np.square(means)) - np.square(mean), 0.0)
  # 1 - the windows' effective error correlation, pooled over the
  # neighbourhood the pixel's windows span (step 5).
  ratio = spread / average

  def box(values):
    return ndimage.uniform_filter(values, size=2 * patch_size - 1,
                                  mode='reflect')

  def of_mean(uncorrelated):
    return average * np.maximum(1.0 - uncorrelated,
                                1.0 / window_counts(image_shape, patch_size))

  of_observed = of_mean(box(ratio))
  if observed is None:
    return mean, of_observed
  observed = np.asarray(observed, bool)
  if not calibrated or observed.all():
    return mean, np.where(observed, of_observed, average + spread)
  # Pooled over every missing pixel (step 5c).
  missing = ~observed
  return mean, np.where(observed, of_observed, of_mean(
      np.sum(spread[missing]) / np.sum(average[missing])))


def psnr(estimate, clean):
  """Peak signal-to-noise ratio in dB for images in [0, 1]."""
  return float(peak_signal_noise_ratio(
      np.asarray(clean, np.float64), np.asarray(estimate, np.float64),
      data_range=1.0))


def interval_coverage(estimate, stddev, clean, pixels=None, z=1.959964):
  """Fraction of pixels whose error lies within +-z standard deviations.

  Args:
    estimate, stddev, clean: `[rows, cols]` arrays.
    pixels: optional bool `[rows, cols]`, the pixels counted (default all).
    z: half-width in standard deviations (default: the 95% interval).

  Returns:
    dict: 'overall', and 'low_half' / 'high_half' (the pixels at or below /
    above the median standard deviation), each a fraction in [0, 1] (NaN
    for an empty half).
  """
  error = np.abs(np.asarray(estimate) - clean)
  stddev = np.asarray(stddev)
  if pixels is None:
    pixels = np.ones(error.shape, bool)
  error, stddev = error[pixels], stddev[pixels]
  inside = error <= z * stddev
  median = np.median(stddev)

  def fraction(selected):
    return float(selected.mean()) if selected.size else float('nan')

  return {'overall': fraction(inside),
          'low_half': fraction(inside[stddev <= median]),
          'high_half': fraction(inside[stddev > median])}


def _check_image(image, observed, noise_std, patch_size, num_latents,
                 scale_rounds, num_classes, class_rounds):
  if not isinstance(image, np.ndarray) and not hasattr(image, '__array__'):
    raise TypeError(f'image must be an array, got {type(image).__name__}.')
  image = np.asarray(image)
  if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
    raise TypeError(f'image must hold numbers, got dtype {image.dtype}.')
  if image.ndim != 2:
    raise ValueError(f'image must be a grey 2-D array [rows, cols], got '
                     f'shape {image.shape}.')
  _checks.check_count(patch_size, 'patch_size', 2, min(image.shape))
  _checks.check_count(scale_rounds, 'scale_rounds', 0)
  _checks.check_count(num_classes, 'num_classes')
  _checks.check_count(class_rounds, 'class_rounds', 0)
  if num_latents is not None:
    _checks.check_count(num_latents, 'num_latents')
  observed = _checks.check_mask(observed, image.shape, like='image')
  if not observed.any():
    raise ValueError('mask marks every pixel missing: nothing is observed.')
  values = image[observed].astype(np.float64)
  if not np.all(np.isfinite(values)):
    raise ValueError('image has NaN or inf values at observed pixels.')
  if values.min() < _VALUE_RANGE[0] or values.max() > _VALUE_RANGE[1]:
    raise ValueError(
        f'image values must lie in [0, 1] (noise may push them a little '
        f'outside), got [{values.min():.3g}, {values.max():.3g}]; scale the '
        'image to [0, 1] first.')
  if np.ptp(values) == 0:
    raise ValueError('image is constant at its observed pixels: nothing to '
                     'restore.')
  if noise_std is not None:
    _checks.check_real(noise_std, 'noise_std', low=0.0, low_open=False)
  return np.where(observed, image, 0.0).astype(np.float64), observed


def restore_image(image, *, observed=None, noise_std=None, patch_size=8,
                  num_latents=None, num_train_patches=8192, iterations=20,
                  e_step_iterations=30, scale_rounds=10, num_classes=24,
                  class_rounds=0, seed=0, dtype='float32',
                  progress=False):
  """Denoises and/or inpaints a grey image; returns means and error bars.

  Args:
    image: `[rows, cols]` float array in [0, 1] (the damaged image; values
      at missing pixels are ignored).
    observed: optional `[rows, cols]` bool, true where a pixel is observed;
      default all observed (denoising only).
    noise_std: optional float >= 0, the noise std of the observed pixels;
      default None: learned (blind). 0 means the observed pixels are exact
      (inpainting a clean image): the model still learns its sigma^2 (then
      the misfit of the patch model), the observed pixels are kept as
      they are, with uncertainty 0, and a missing pixel's variance adds
      the misfit: its true value is a draw of the same model as the exact
      observed ones, W z + e (posterior predictive), not the noise-free
      W z of denoising (95% coverage of the missing pixels 0.869 -> 0.969
      on chelsea). The misfit is learned per patch (module doc, step 4b),
      and the windows' variances of the missing pixels are scaled by
      their errors at 1/8 of the observed pixels, hidden from them and
      from the dictionaries' learning, and the restored missing pixels'
      variances by the errors of those pixels restored alike (step 5c:
      one more posterior pass; `RestorationResult.error_factors` and
      `variance_factors`).
    patch_size: p, the patch side.
    num_latents: H, atoms; default p^2 / 4 (module doc, step 2).
    num_train_patches: patches (drawn at random) the dictionary is learned
      on.
    iterations: masked-EM iterations.
    e_step_iterations: majorise-minimise iterations of the final E-step of
      every patch (lambda, sigma^2 held at the learned values).
    scale_rounds: rounds of per-patch prior scales (module doc, step 4);
      0 for none (one lambda for every patch).
    num_classes: K, patch classes with a dictionary each (module doc,
      steps 2b and 5b); 1 for one dictionary for the whole image. At most
      the number of training patches.
    class_rounds: rounds in which every patch moves to the class (among
      the `_CLASS_CANDIDATES` nearest by k-means) whose dictionary gives
      it the highest ELBO, and the classes' dictionaries are learned
      again (module doc, step 2c); default 0; none with num_classes=1.
      Inpainting (`noise_std=0`)
      with 2 rounds gained 0.2-0.5 dB on three of four photographs and
      lost 0.08 on the fourth, at 4-5 times the time; denoising +0.03 dB.
    seed: seeds the patch subset.
    dtype: 'float32' (default) or 'float64', the dtype of the model's
      computations (the combination of step 5 and the results are
      float64). Float32 restores the benchmark's photographs to within
      0.02 dB of float64, with the same coverage, 2.4 times as fast
      (module doc, "Dtype").
    progress: show one Keras progress bar over the patches' posteriors
      (step 4: one pass over every patch, two with patch classes).

  Returns:
    `RestorationResult`.

  Raises:
    TypeError, ValueError: bad input, naming the argument, before any work.
  """
  start = time.perf_counter()
  image, observed = _check_image(image, observed, noise_std, patch_size,
                                 num_latents, scale_rounds, num_classes,
                                 class_rounds)
  if dtype not in ('float32', 'float64'):
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")
  num_latents = num_latents or max(1, patch_size * patch_size // 4)
  patches = image_to_patches(image, patch_size)
  masks = image_to_patches(observed, patch_size)
  num_seen = masks.sum(1, keepdims=True)                          # [N, 1]
  visible = num_seen[:, 0] > 0
  means, centred = _centre(patches, masks, np.mean(image[observed]), dtype)
  # Centring removes 1/|m_n| of each pixel's noise variance (module doc).
  shrink = float(np.mean(1.0 - 1.0 / np.maximum(num_seen[visible], 2)))

  exact = noise_std is not None and noise_std == 0
  if num_classes == 1:
    class_rounds = 0
  # Step 5c: exact observations and pixels to fill. Its held-out pixels are
  # hidden from everything learned from the image, so that their errors are
  # those of pixels no dictionary saw, as the missing ones.
  calibrated = exact and not observed.all()
  held_out_pixels = (_held_out_pixels(observed, seed) if calibrated
                     else np.zeros_like(observed))
  learning_masks = masks & ~(image_to_patches(held_out_pixels, patch_size)
                             > 0)
  learning = (_centre(patches, learning_masks, np.mean(image[observed]),
                      dtype)[1] if calibrated else centred)

  rng = np.random.default_rng(seed)
  candidates = np.flatnonzero(_learnable(learning_masks))
  subset = np.sort(rng.choice(candidates, min(num_train_patches,
                                              len(candidates)),
                              replace=False))
  if num_classes > len(subset):
    raise ValueError(f'num_classes must be at most the number of training '
                     f'patches ({len(subset)}), got {num_classes}.')
  fixed_noise = (None if noise_std is None or exact
                 else noise_std**2 * shrink)
  learned = fit_masked_em(learning[subset], num_latents,
                          mask=learning_masks[subset], iterations=iterations,
                          noise_variance=fixed_noise, seed=seed)
  noise_variance = learned.noise_variance                 # of centred pixels
  pixel_variance = (noise_variance / shrink if fixed_noise is None
                    else float(noise_std)**2)
  w = learned.dictionary

  # The E-step divides by sigma^2 (an exact fit could learn 0).
  positive_noise = max(noise_variance, float(np.finfo(dtype).tiny))
  candidates = min(_CLASS_CANDIDATES, num_classes)
  passes = ((1 if num_classes == 1 else 2) + calibrated
            + class_rounds * candidates)
  bar = keras.utils.Progbar(passes * len(centred)) if progress else None
  window = functools.partial(
      _window_posteriors, noise_variance=positive_noise,
      pixel_variance=pixel_variance, exact=exact,
      iterations=e_step_iterations, scale_rounds=scale_rounds, bar=bar)
  labels = np.zeros(len(centred), np.int64)
  dictionaries, scales = w[None], learned.scales[None]
  estimates, variances, patch_scales, patch_pixel_noise = window(
      centred, masks, num_seen, dictionaries, scales, labels)
  own, errors, weights = estimates, variances, None
  if num_classes > 1:
    # Step 2b: a dictionary per patch class; step 5b: their error bars.
    # k-means sees whole patches: missing pixels as the whole image's
    # dictionary restores them.
    filled = np.where(masks, centred, estimates)
    labels, nearest = _patch_classes(filled, subset, num_classes,
                                     candidates, seed)
    learn = functools.partial(
        _class_dictionaries, learning, learning_masks, subset=subset,
        num_latents=num_latents, noise_variance=positive_noise,
        iterations=iterations, seed=seed, fallback=(w, learned.scales))
    for _ in range(class_rounds):
      # Step 2c: each patch to the class whose dictionary explains it best.
      dictionaries, scales = learn(labels)
      labels = _best_classes(
          learning, learning_masks, dictionaries, scales, nearest,
          noise_variance=positive_noise, iterations=e_step_iterations,
          scale_rounds=scale_rounds, patch_noise=exact, bar=bar)
    dictionaries, scales = learn(labels)
    own, weights, patch_scales, patch_pixel_noise = window(
        centred, masks, num_seen, dictionaries, scales, labels)
    # Step 5b's error bars where the observations are noisy.
    errors = (weights if exact else
              error_variance_of_either(own, weights, estimates, variances))
  error_factors = variance_factors = None
  if calibrated:
    error_factors, variance_factors = _held_out_error_factors(
        image, observed, held_out_pixels, functools.partial(
            window, dictionaries=dictionaries, scales=scales, labels=labels),
        patch_size, dtype)
    errors, weights = errors * error_factors, None
  restored, variance = combine_posteriors(
      own + means, errors, image.shape, patch_size, observed,
      weight_variances=weights, calibrated=calibrated)
  if calibrated:
    # Step 5c, by pixel: the missing pixels' variances, scaled by the
    # held-out pixels' errors at the same variance.
    variance = np.where(observed, variance,
                        scale_by_variance(variance, variance_factors))
  if exact:
    # Observed: known exactly.
    restored = np.where(observed, image, restored)
    variance = np.where(observed, 0.0, variance)
  seconds = time.perf_counter() - start
  logging.info('restored a %s image in %.1f s; noise std %.4g (%s)',
               image.shape, seconds, np.sqrt(pixel_variance),
               'learned' if noise_std is None else 'given')
  return RestorationResult(
      restored=restored, uncertainty=np.sqrt(variance),
      noise_std=0.0 if exact else float(np.sqrt(pixel_variance)),
      model_noise_std=float(np.sqrt(pixel_variance)),
      noise_learned=noise_std is None, dictionary=w,
      class_dictionaries=dictionaries, patch_classes=labels,
      history=learned.history, patch_scales=patch_scales,
      patch_noise_std=np.sqrt(patch_pixel_noise[:, 0]),
      error_factors=(None if error_factors is None
                     else error_factors.reshape(patch_size, patch_size)),
      variance_factors=variance_factors, seconds=seconds)


def _window_posteriors(centred, masks, num_seen, dictionaries, scales,
                       labels, *, noise_variance, pixel_variance, exact,
                       iterations, scale_rounds, bar):
  """Each window's posterior mean and variance of its patch (steps 4-4c).

  Args:
    centred, masks: `[N, D]` centred patches and their 0/1 masks.
    num_seen: `[N, 1]` observed pixels per patch.
    dictionaries: `[K, D, H]`; scales: `[K, H]`; labels: `[N]` int, the
      dictionary of each patch.
    noise_variance: sigma^2 of the centred pixels (> 0); pixel_variance:
      the per-pixel noise variance it stands for (step 3).
    exact, iterations, scale_rounds: as in `restore_image`.
    bar: a `keras.utils.Progbar` advanced by the patches done, or None.

  Returns:
    (estimates `[N, D]` of the centred patch (add the patch means),
    variances `[N, D]`, patch scales c `[N]`, per-pixel patch noise
    variances `[N, 1]`), float64.
  """
  loc, scale, patch_scales, patch_noise, misfit = _posteriors(
      centred, masks, dictionaries, scales, labels, noise_variance,
      iterations, scale_rounds, exact, bar)
  # Per pixel, as pixel_variance is to sigma^2 (step 3): [N, 1].
  patch_pixel_noise = (patch_noise
                       * (pixel_variance / noise_variance))[:, None]
  estimates = np.empty(centred.shape, np.float64)
  variances = np.empty_like(estimates)
  for k, atoms in enumerate(dictionaries):
    rows = labels == k
    estimates[rows] = loc[rows] @ atoms.T
    variances[rows] = np.square(scale[rows]) @ np.square(atoms).T
  # The noise of the patch mean (step 4).
  variances += patch_pixel_noise / np.maximum(num_seen, 1)
  if exact:
    # Missing: posterior predictive of the pixel itself, W z + e,
    # e ~ N(0, sigma_n^2) (the patch's misfit), in every window (step 4b).
    variances += patch_pixel_noise
  else:
    # The patch's misfit beyond the noise (step 4c).
    variances += np.maximum(misfit - noise_variance, 0.0)[:, None]
  return estimates, variances, patch_scales, patch_pixel_noise


def window_error_factors(squared_errors, variances, held_out, patch_size):
  """Squared error over predicted variance, by position in the window.

  f_d = sum_n h_nd e_nd^2 / sum_n h_nd v_nd at position d of the p x p
  window, both sums pooled over the 8 symmetries of the square (the
  positions that lie alike to the window's border: a corner with the
  corners) (module doc, step 5c).

  Args:
    squared_errors, variances: `[N, p^2]` float, each window's squared
      error and predicted variance at every position.
    held_out: `[N, p^2]` bool, the entries that count.
    patch_size: p.

  Returns:
    `[p^2]` float64 factors; 1 at a position none of whose symmetric
    positions was held out.
  """

  def pooled(values):
    square = np.where(held_out, np.asarray(values, np.float64), 0.0).sum(
        0).reshape(patch_size, patch_size)
    return sum(np.rot90(t, k) for t in (square, square.T)
               for k in range(4)).ravel()

  errors, predicted = pooled(squared_errors), pooled(variances)
  some = predicted > 0
  return np.where(some, errors / np.where(some, predicted, 1.0), 1.0)


def _held_out_pixels(observed, seed):
  """The observed pixels step 5c holds out: `[rows, cols]` bool.

  `_HELD_OUT_SHARE` of the observed pixels (`[rows, cols]` bool), drawn at
  random over the image (seeded by `seed`), so a pixel hidden from one
  window is hidden from every window and from the dictionaries' learning
  (module doc, step 5c).
  """
  rng = np.random.default_rng((seed, 5))
  return observed & (rng.random(observed.shape) < _HELD_OUT_SHARE)


def _centre(patches, masks, fallback, dtype):
  """Patch means over the masked pixels and the centred patches.

  Args:
    patches: `[N, D]` float64; masks: `[N, D]` bool, the pixels that count.
    fallback: the mean given to a patch with none.
    dtype: the centred patches' dtype.

  Returns:
    (means `[N, 1]` float64, centred `[N, D]` of `dtype`, 0 off the mask).
  """
  count = masks.sum(1, keepdims=True)
  means = np.where(count > 0, np.where(masks, patches, 0.0).sum(
      1, keepdims=True) / np.maximum(count, 1), fallback)
  return means, np.where(masks, patches - means, 0.0).astype(dtype)


def _held_out_error_factors(image, observed, held_out_pixels, window,
                            patch_size, dtype):
  """Step 5c's factors, measured at observed pixels hidden from the windows.

  Args:
    image: `[rows, cols]` float64, exact at observed pixels; observed:
      `[rows, cols]` bool.
    held_out_pixels: `[rows, cols]` bool, the observed pixels hidden
      (`_held_out_pixels`).
    window: `f(centred, masks, num_seen) -> (estimates, variances, ...)`,
      `_window_posteriors` with the restoration's dictionaries and
      settings.
    patch_size: p; dtype: the model's dtype.

  Returns:
    (`window_error_factors` `[p^2]` of the windows at the held-out pixels,
    `variance_error_factors` `[B, 2]` of the held-out pixels as restored
    from those windows, scaled by the first, as the missing ones are),
    float64.
  """
  patches = image_to_patches(image, patch_size)
  masks = image_to_patches(observed, patch_size)
  held_out = image_to_patches(held_out_pixels, patch_size) > 0
  kept = masks & ~held_out
  num_kept = kept.sum(1, keepdims=True)
  means, centred = _centre(patches, kept, 0.0, dtype)
  estimates, variances, *_ = window(centred, kept, num_kept)
  # A window left with fewer than two pixels has nothing to predict from.
  factors = window_error_factors(
      np.square(estimates + means - patches), variances,
      held_out & masks & _learnable(kept)[:, None], patch_size)
  # The held-out pixels restored as the missing ones are: step 5 on the
  # same pass, the held-out pixels counted as missing.
  restored, variance = combine_posteriors(
      estimates + means, variances * factors, image.shape, patch_size,
      observed & ~held_out_pixels, calibrated=True)
  num_held_out = int(held_out_pixels.sum())
  if not num_held_out:
    return factors, np.ones((1, 2))
  return factors, variance_error_factors(
      np.square(restored - image)[held_out_pixels],
      variance[held_out_pixels],
      max(1, min(_VARIANCE_BINS, num_held_out // _MIN_BIN_PIXELS)))


def variance_error_factors(squared_errors, variances, num_bins):
  """Squared error over predicted variance in bins of the variance.

  The values are split at the quantiles of log v into `num_bins` bins of
  (nearly) equal count; bin b's factor is g_b = sum_b e^2 / sum_b v (a
  ratio of sums, as `window_error_factors`) and its variance the geometric
  mean of its v (module doc, step 5c).

  Args:
    squared_errors, variances: `[M]` float, the squared errors and the
      predicted variances (> 0) of M values.
    num_bins: B, an integer in [1, M].

  Returns:
    `[B, 2]` float64 rows (variance, factor), variances ascending.

  Raises:
    ValueError: shapes differ, a variance is not positive, or num_bins is
      not in [1, M].
  """
  squared_errors = np.asarray(squared_errors, np.float64).ravel()
  variances = np.asarray(variances, np.float64).ravel()
  if squared_errors.shape != variances.shape:
    raise ValueError(f'squared_errors and variances must have the same size, '
                     f'got {squared_errors.size} and {variances.size}.')
  if not np.all(variances > 0):
    raise ValueError('variances must be positive.')
  num_bins = _checks.check_count(num_bins, 'num_bins', 1, variances.size)
  logs = np.log(variances)
  order = np.argsort(logs, kind='stable')
  rows = []
  for part in np.array_split(order, num_bins):
    rows.append((np.exp(np.mean(logs[part])),
                 np.sum(squared_errors[part]) / np.sum(variances[part])))
  return np.asarray(rows, np.float64)


def scale_by_variance(variances, factors):
  """Variances times the factor of their bin, interpolated in log v.

  v g(v), with log g piecewise linear in log v through the rows of
  `variance_error_factors` and constant beyond the first and last (module
  doc, step 5c).

  Args:
    variances: float array (> 0) of any shape.
    factors: `[B, 2]` rows (variance, factor), variances ascending.

  Returns:
    float64 array of the shape of `variances`.
  """
  variances = np.asarray(variances, np.float64)
  factors = np.asarray(factors, np.float64)
  tiny = np.finfo(np.float64).tiny
  return variances * np.exp(np.interp(
      np.log(np.maximum(variances, tiny)), np.log(factors[:, 0]),
      np.log(np.maximum(factors[:, 1], tiny))))


def error_variance_of_either(mean, variance, other_mean, other_variance):
  """E (mean - x)^2 when x is equally likely drawn from either of two models.

  With x ~ (1/2) N(mean, variance) + (1/2) N(other_mean, other_variance):
  E (mean - x)^2 = (variance + other_variance + (mean - other_mean)^2) / 2
  (module doc, step 5b).

  Args:
    mean, variance, other_mean, other_variance: broadcastable float arrays,
      variances >= 0.

  Returns:
    float64 array of the broadcast shape.
  """
  mean, other_mean = np.asarray(mean, np.float64), np.asarray(other_mean,
                                                              np.float64)
  return 0.5 * (np.asarray(variance, np.float64) + other_variance
                + np.square(mean - other_mean))


def _learnable(masks):
  """`[N]` bool: patches with at least two observed pixels (`masks`
  `[N, D]`); a centred patch with one is all zeros, nothing to learn."""
  return masks.sum(1) >= 2


def _patch_classes(filled, subset, num_classes, num_candidates, seed):
  """Each patch's class by k-means on its shape (module doc, step 2b).

  Args:
    filled: `[N, D]` the centred patches with their missing pixels filled
      in (step 4's posterior means under step 2's dictionary).
    subset: `[M]` indices of step 2's training patches (k-means is fitted
      on them).
    num_classes: K; num_candidates: C <= K; seed: seeds k-means.

  Returns:
    (labels `[N]` int64 in [0, K), the nearest class of each patch;
    candidates `[N, C]` int64, its C nearest classes, nearest first).
  """
  # The shape of a patch, not its contrast, decides its class.
  features = filled / np.maximum(
      np.linalg.norm(filled, axis=1, keepdims=True), 1e-12)
  kmeans = cluster.MiniBatchKMeans(num_classes, random_state=seed, n_init=3)
  kmeans.fit(features[subset])
  labels = kmeans.predict(features).astype(np.int64)
  candidates = np.argsort(kmeans.transform(features), axis=1,
                          kind='stable')[:, :num_candidates]
  # predict and transform agree but for ties; the label comes first.
  candidates[:, 0] = labels
  logging.info('patch classes: %s patches', np.bincount(labels,
                                                         minlength=num_classes))
  return labels, candidates.astype(np.int64)


def _best_classes(x, masks, dictionaries, scales, candidates, *,
                  noise_variance, iterations, scale_rounds, patch_noise,
                  bar):
  """Each patch's class with the highest ELBO among its candidates (step 2c).

  Args:
    x, masks: `[N, D]` centred patches and their 0/1 masks.
    dictionaries: `[K, D, H]`; scales: `[K, H]`.
    candidates: `[N, C]` int, the classes each patch may take.
    noise_variance, iterations, scale_rounds, patch_noise, bar: as in
      `_posteriors`.

  Returns:
    labels `[N]` int64: per patch, the candidate k maximising L_n under
    class k's dictionary, with the patch's own prior scales c_n lambda_k
    and (with `patch_noise`) misfit sigma_n^2 at their fitted values
    (`tfp_esc.objective.elbo.classical_elbo`, per point), first candidate
    on ties.
  """
  best = np.full(len(x), -np.inf)
  labels = candidates[:, 0].copy()
  x64, masks64 = x.astype(np.float64), masks.astype(np.float64)
  for choice in candidates.T:
    loc, scale, patch_scales, noises, _ = _posteriors(
        x, masks, dictionaries, scales, choice, noise_variance, iterations,
        scale_rounds, patch_noise, bar)
    elbo = np.empty(len(x))
    for k in np.unique(choice):
      rows = choice == k
      elbo[rows] = elbo_lib.classical_elbo(
          x64[rows], dictionaries[k].astype(np.float64),
          DiagonalGaussian(loc[rows], scale[rows]),
          patch_scales[rows, None] * scales[k].astype(np.float64)[None],
          noises[rows], per_point=True, mask=masks64[rows]).numpy()
    better = elbo > best
    best[better] = elbo[better]
    labels[better] = choice[better]
  if not np.all(np.isfinite(best)):
    raise FloatingPointError(
        f'patch ELBO not finite for {np.sum(~np.isfinite(best))} patches '
        'while choosing their classes (step 2c).')
  logging.info('patch classes after ELBO choice: %s patches',
               np.bincount(labels, minlength=len(dictionaries)))
  return labels


def _class_dictionaries(x, masks, labels, subset, num_latents,
                        noise_variance, iterations, seed, fallback):
  """A dictionary per patch class (module doc, step 2b).

  Args:
    x, masks: `[N, D]` centred patches (0 where missing) and 0/1 masks.
    labels: `[N]` int, each patch's class (`_patch_classes`).
    subset: `[M]` indices of step 2's training patches.
    num_latents: H; noise_variance: sigma^2, held; iterations: masked-EM
      iterations per class; seed: seeds the classes' training patches.
    fallback: (W `[D, H]`, lambda `[H]`), step 2's dictionary, for a class
      with nothing to learn (no patches, or only flat ones).

  Returns:
    (dictionaries `[K, D, H]`, scales `[K, H]`), K = max(labels) + 1.
  """
  rng = np.random.default_rng(seed)
  # The same number of training patches in every class: one compilation.
  size = min(_CLASS_TRAIN_PATCHES, len(subset))
  dictionaries, scales = [], []
  for k in range(int(labels.max()) + 1):
    members = np.flatnonzero(labels == k)
    members = members[_learnable(masks[members])]
    if len(members) == 0:
      members = subset
    train = np.sort(rng.choice(members, size, replace=len(members) < size))
    seen = x[train][masks[train].astype(bool)]
    if np.all(seen == seen[0]):
      dictionaries.append(fallback[0])
      scales.append(fallback[1])
      continue
    fitted = fit_masked_em(x[train], num_latents, mask=masks[train],
                           iterations=iterations,
                           noise_variance=noise_variance, seed=seed)
    dictionaries.append(fitted.dictionary)
    scales.append(fitted.scales)
  return np.stack(dictionaries), np.stack(scales)


def _posteriors(x, masks, dictionaries, scales, labels, noise_variance,
                iterations, scale_rounds, patch_noise, bar):
  """Diagonal posteriors of every patch, W, lambda, sigma^2 held fixed, with
  per-patch prior scales c_n (module doc, step 4) and, with `patch_noise`,
  per-patch misfits sigma_n^2 (step 4b).

  Args:
    x, masks: `[N, D]` centred patches and their 0/1 masks (x's dtype).
    dictionaries: `[K, D, H]`; scales: `[K, H]`; labels: `[N]` int, each
      patch's dictionary.
    noise_variance: sigma^2 > 0; iterations, scale_rounds: counts;
    patch_noise: bool; bar: a `keras.utils.Progbar` advanced by the
      patches done, or None.

  The points separate, so each class's patches go in chunks of `_CHUNK`
  rows (the last one padded) through one compiled step
  (`_posterior_step`), the same for every class: an E-step from zero means,
  then `scale_rounds` rounds of c_n = c_n* (and sigma_n^2 = sigma_n^2*) and
  a warm E-step of `_SCALE_ROUND_ITERATIONS` iterations.

  Returns:
    (loc, scale) `[N, H]` float64, the patch scales c `[N]`, the patch
    noise variances sigma_n^2 `[N]` (sigma^2 without `patch_noise`) and
    the patch misfits sigma_n^2* at the final posteriors `[N]`.
  """
  dtype = tf.as_dtype(x.dtype)
  num_points, _ = x.shape
  rms = float(np.sqrt(np.sum(np.square(x)) / max(masks.sum(), 1)))
  settings = [tf.constant(noise_variance, dtype),
              tf.constant(np.sqrt(noise_variance), dtype),
              tf.constant(RELATIVE_SCALE_FLOOR * rms, dtype),
              tf.constant(iterations), tf.constant(scale_rounds)]
  step = _posterior_step(patch_noise)
  chunk = min(_CHUNK, num_points)
  order, parts = [], []
  for k, (w, lam) in enumerate(zip(dictionaries, scales)):
    members = np.flatnonzero(labels == k)
    w, lam = tf.constant(w, dtype), tf.constant(lam, dtype)
    for begin in range(0, len(members), chunk):
      rows = members[begin:begin + chunk]
      xs, ms = x[rows], masks[rows].astype(x.dtype)
      pad = chunk - len(xs)
      if pad:
        xs = np.concatenate([xs, np.zeros((pad, xs.shape[1]), x.dtype)])
        ms = np.concatenate([ms, np.zeros((pad, ms.shape[1]), x.dtype)])
      parts.append([t.numpy()[:chunk - pad].astype(np.float64)
                    for t in step(tf.constant(xs), tf.constant(ms), w, lam,
                                  *settings)])
      order.append(rows)
      if bar is not None:
        bar.add(chunk - pad)
  inverse = np.argsort(np.concatenate(order))
  return tuple(np.concatenate(p)[inverse] for p in zip(*parts))


@functools.cache
def _posterior_step(patch_noise):
  """The compiled step of `_posteriors`, one per process and `patch_noise`.

  Traced per dtype and shape, XLA-compiled; everything is an argument, so
  restoring another image of the same size (or the same image again)
  reuses the compilation.

  Args:
    patch_noise: True: per-patch misfits sigma_n^2 (module doc, step 4b);
      False: sigma^2 for every patch (a separate compilation, so denoising
      does not pay for them).

  Returns:
    A `tf.function`: (x `[B, D]`, mask `[B, D]` 0/1, w `[D, H]`, scales
    `[H]`, noise_variance, start_scale, floor scalars, iterations,
    scale_rounds int32 scalars) -> (loc `[B, H]`, scale `[B, H]`, patch
    scales c `[B]`, patch noise variances `[B]`, the patches' misfits
    sigma_n^2* at the final posteriors `[B]`).
  """

  # autograph=False: see `tfp_esc.inference.mm` ("Compiling it").
  @tf.function(jit_compile=True, autograph=False)
  def step(x, mask, w, scales, noise, start_scale, floor, iterations,
           scale_rounds):
    dtype = x.dtype
    ones = tf.ones([3], dtype)
    shape = [tf.shape(x)[0], tf.shape(w)[1]]
    loc, scale = mm_e_step(
        x, w, tf.zeros(shape, dtype), tf.fill(shape, start_scale), ones,
        iterations=iterations, floor=floor, scales=scales,
        noise_variance=noise, mask=mask)

    def scale_round(i, loc, scale, patch_scale, noises):
      patch_scale = _optimal_patch_scales(loc, scale, scales)
      if patch_noise:
        noises = _optimal_patch_noise(x, mask, w, loc, scale, noise)
      loc, scale = mm_e_step(
          x, w, loc, scale, ones, iterations=_SCALE_ROUND_ITERATIONS,
          floor=floor, scales=patch_scale * scales,
          noise_variance=noises if patch_noise else noise, mask=mask)
      return i + 1, loc, scale, patch_scale, noises

    _, loc, scale, patch_scale, noises = tf.while_loop(
        lambda i, *_: i < scale_rounds, scale_round,
        (tf.constant(0), loc, scale, tf.ones([shape[0], 1], dtype),
         tf.fill(shape[:1], noise)))
    return (loc, scale, patch_scale[:, 0], noises,
            _patch_misfit(x, mask, w, loc, scale))

  return step


def _patch_misfit(x, mask, w, loc, scale):
  """sigma_n^2* = E_q ||m_n * (x_n - W z)||^2 / |m_n|, the sigma^2* of each
  patch alone: `[N]` (module doc, steps 4b and 4c)."""
  error = elbo_lib.reconstruction_error(x, w, DiagonalGaussian(loc, scale),
                                        mask)
  seen = tf.maximum(tf.reduce_sum(mask, -1), tf.ones([], x.dtype))
  return error / seen


def _optimal_patch_noise(x, mask, w, loc, scale, noise):
  """`_patch_misfit` kept in [_MIN_PATCH_NOISE sigma^2, sigma^2]: `[N]`
  (module doc, step 4b)."""
  return tf.clip_by_value(_patch_misfit(x, mask, w, loc, scale),
                          _MIN_PATCH_NOISE * noise, noise)


def _optimal_patch_scales(loc, scale, scales):
  """c_n* = max(c_min, (1/H) sum_h E|z_nh| / lambda_h): `[N, 1]` (step 4)."""
  ratio = tf.reduce_mean(expected_magnitude(loc, scale) / scales, -1,
                         keepdims=True)
  return tf.maximum(ratio, tf.constant(_MIN_PATCH_SCALE, loc.dtype))
