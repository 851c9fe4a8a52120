"""Member keys are the users' data (GPU-days of cached members): every demo template's plan keeps its keys.

The keys below are those of each ``*-demo`` template's first grid point, with stand-ins for the
data's and the checkpoints' digests (the real ones enter the key the same way). A change that
moves one of them makes every member cached under it unreachable: it needs a migration, and the
new keys pinned here with a word on why.
"""

import pathlib

import optuna
import pytest

from enstune.checks import load_checked
from enstune.member_keys import member_key
from enstune.methods import get_method, regularize
from enstune.study import grid_points, trial_config
from enstune.studies import __file__ as STUDIES

PINNED = {
    'constrained-demo': [
        'e424db1bd51810d53f481ae1bbdf5739',
        '15f61ca3429cf2b2c8a34d3fe946031a',
        'a82f807a3f5e99697feda59c21c45e02',
        '4bec3fadaca37a02c0fc75bf5d0fba7d',
        'be10bf338c6b7778c7c3d03b75a54095',
        '7b2263bc820e98f53a0233f956000191',
    ],
    'csgld-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '9d65851b49702d0eb19747f89647610d',
        '70ace7f333db44c6fab9822066242e2f',
        'f111e1746c56ca22d8f50f4bbbfbed0e',
        '819cf24dfec2246592fabd57bc70a3df',
        '2e7b0d385508c2f4a7c5eb0a3f2c0133',
        '68fc04d0b05b5d14f8420b48489fc47c',
    ],
    'distilled-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '2bcd0f27d383e618753d3e845dfcadd5',
        '9f0e9cdd699c839709d4be0299138dc3',
        'e424db1bd51810d53f481ae1bbdf5739',
        '7ad03c954739998e46ac3fed4d5ab9d5',
        'bde6b9c940c4135d7772e4c21aa48eb9',
    ],
    'fge-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '6509f18a96b7cd8ff97b52c2fb9d9491',
        '77f10477178d9fcc6a057fc99b1aec33',
        '056b294c19c7a6d88d37a90f4eea4496',
        '0a9b41375fd620e6b1da46ddb0fb9c49',
    ],
    'finetune-demo': [
        '61c36bbc62b0e2c947c18b58b355ac7a',
    ],
    'globalde-demo': [
        '082b6f48804669838ce01d4ec61c39be',
        '6cd6503aaf7c0ec00fa5d2be563a3557',
        '2ab6a1815508f16b8bd25af27aae43e6',
        'f2c049e1612f63f288596c38e1d18180',
        '34b5d1e997121b8a606432e3efc0fc71',
    ],
    'laplace-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'e851557313f09bf7ca972027f1e0e8fb',
        '7bb0153f0f8d68a8a31321e095dc126d',
        'f25b71135cfdae205014e72ef8252ca5',
        '62e55d7b4aa311d0e6a2b9a3fd04ad39',
        '9f07913b83f7e62085e3671794dabc21',
    ],
    'localde-demo': [
        '082b6f48804669838ce01d4ec61c39be',
        '2ac242b4f6bff48d0c643c1d547bdae5',
        'acf517c0c3c9a2db74f53014fd496c70',
        '790b7e0b663900781e40b148ce8224d0',
        '9da3e067fa97d2e1f101c3c87817d63b',
    ],
    'localde-diverse-demo': [
        'e2f0a1589bac3253653c6dc2fce95d00',
        'fb1b98f476d31766047787656f1d07d8',
        'fb524f0b70188a46d3e064ed528b2779',
        'ff0c3f376e876e29b8810599a7f56522',
        '0e44d8ece74b663e227536b130011cb1',
    ],
    'permuted-demo': [
        '082b6f48804669838ce01d4ec61c39be',
        '6cd6503aaf7c0ec00fa5d2be563a3557',
        'b90e0b4033b9f9dd22dd078212392f3f',
        '2ab6a1815508f16b8bd25af27aae43e6',
        '3bc4476ba3fd3e9bcb250cf5aa234731',
        'f2c049e1612f63f288596c38e1d18180',
        'bb0ec5290bf24aaafc76fd3cf156dc1b',
        '34b5d1e997121b8a606432e3efc0fc71',
        '326bb44e6af772607da46daa77c09908',
    ],
    'spro-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '0bdb79ab7fc0251c8455f26a9ef4a88a',
        'e355acb49a940b4d2c8ec0afd5641e56',
        'd20e97542100724b8cb7682d8b026852',
        '33b63de89b76656cd71eb3a2fc4c1e02',
        '8ef684ff2db672eb347482bf9931cee1',
        'becf400a6378038f2754e67389bf8b5f',
    ],
    'sse-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'a3925c24ddef9d656a0cb633c5dba63a',
        '2c692fdcd4f691acc9fbcdd2bfb01c2b',
        'b182cdd36991c9c0606bb0c0ff980304',
        'df385e9d7e9b3a15ccf12dd32bbcaa22',
    ],
    'sse-ewc-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '4a9c6db4ac4fe8379947ac2fafdfe3e6',
        '765c2a4edb23eadcf29445389407ce1d',
        'b702c228352fd0d06af8acf4cda298ae',
        'b368d4d5aaca084244052902ff3c408a',
    ],
    'sse-l2ft-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '1f878e2ef5e915611689b634f74272c3',
        'b30c3c98c843ed591e8a736f0dfc78d3',
        '51859e9afe60383d6130a71c56bba348',
        'e7a6201ddce454357f1e9772dfe3d03a',
    ],
    'sse-mse-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'b7eab54de0bbd5b7fd489f3d2eeb39c5',
        '96ecf98e08f478837375ea192ccbf23a',
        'de55be7a3c8c1b44c02a4b38f7a046eb',
        'a2fbb732e5af2c3dbd277c036ae58f29',
    ],
    'sse-rtd-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'b9551c7b61b5731739fd5cb5d6439df1',
        '80dbbabf8feb9fe07066b75fbc952154',
        '709392cca523287560ff19938070af7a',
        '1ae34a8f51c330d6b7f9b1fec6b63339',
    ],
    'standard-sse-demo': [
        '209493dff9f27b3fd991076ae47d3551',
        'c71a08c163e676fbec4dfe8c956b1243',
        '59892f46f4560548b132a70e82c56768',
        '71f22ceb244b3085e646d7599fc981b7',
        '846783a1ce5e558e1f90e8dc3a312e00',
    ],
    'starsse-ce-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '0d21380da23a0bf7928547a8ea9084a2',
        '108e02e9c2524642d895723e6b908407',
        'ff3416110945f1bd194a5dcd88dd0a5e',
        'c5f82a7b3cce7fe7e4e3bcfae71df8d3',
    ],
    'starsse-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'a3925c24ddef9d656a0cb633c5dba63a',
        'b0340c2b3b777d7332788015195c6718',
        'b78eadd2399aa692a8eca14b82f0e9e5',
        'd388c2a7fa4dfb82ea612481876bc8de',
    ],
    'starsse-diverse-demo': [
        '082b6f48804669838ce01d4ec61c39be',
        'ddbacb1c46cbd50c920cd26b88eab068',
        '27b04e1c51557f34d2d2f0274be7dd7a',
        '6cab9d361b65a867b5d4eb60858ea558',
        '13f1bbff3c2008c14700ccfe0cb0c4cf',
    ],
    'starsse-freeze-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        'e31e2fde240a9cb57e11ba48e5226472',
        '561fd9aaebc5603ee08566ac5ce9a1aa',
        '29e72b0180dec7cef6a1bb9cce482ba6',
        'ff7e1be97474be562f4acf616ef36486',
    ],
    'starsse-wo-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '2f93e3fdd20d54a133c7c940d6598f77',
        'af631bb11cd94080f4bfcb7277d1ba91',
        'e0c7a7844e3cd4af42b1fd19bbb605c3',
        '69bebc13eb522b314c7aa1a57ad35427',
    ],
    'swag-demo': [
        '7052bc737712bda994acbf29b0337a6b',
        '5d5e6414b6c5ef0276c4b18d68cc3354',
        'e84c5fa31907ec4a0f8ce8f5e6b55caa',
        '257e99cf70888da8f93d1ff73c8b0aee',
        '7b41369ef1f1b8c8a11fa6c430199833',
        '16ccbc18cef378249e13090998e2c4e3',
    ],
    'swe-demo': [
        'c3d0b7017693267f50258a7ef625ccb5',
        '31697e8e0a8bc9ab7af7e4a3fa62a74f',
        '9329a2c8882abd8f8ce084d7b42ab358',
        '950ae354a77b66f369069935e94b8935',
        '3f71d79ae4a2b3d519dac4d0ad8e6417',
    ],
}


def plan_keys(template: str, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The keys of the template's first grid point's plan, parents and references chained as a worker chains them."""
    spec = load_checked(template, overrides)
    cfg = trial_config(optuna.trial.FixedTrial(grid_points(spec)[0] if spec.space else {}), spec)
    keys: dict[int, str] = {}
    for job in regularize(get_method(cfg.method).plan(cfg), cfg):
        start = ({"checkpoint": f"checkpoint-{job.checkpoint}"} if job.checkpoint is not None
                 else {"parent": keys[job.parent]})
        keys[job.index] = member_key(spec.task, "data", start, job, [keys[r] for r in job.refs])
    return list(keys.values())


def test_every_demo_template_is_pinned():
    assert sorted(p.stem for p in pathlib.Path(STUDIES).parent.glob("*-demo.toml")) == sorted(PINNED)


@pytest.mark.parametrize("template", sorted(PINNED))
def test_member_keys_do_not_drift(template):
    assert plan_keys(template) == PINNED[template]


def test_the_shared_first_member_has_one_key_across_methods():
    firsts = {PINNED[t][0] for t in ("starsse-demo", "sse-demo", "fge-demo", "swag-demo", "laplace-demo")}
    assert len(firsts) == 1


def test_a_recipe_field_added_later_leaves_the_keys_alone_at_its_default():
    import dataclasses

    from enstune.recipe import KEY_FIELDS, Recipe, keyed_fields

    @dataclasses.dataclass(frozen=True)
    class Later(Recipe):  # a field a later version adds, with a default that trains as before
        nesterov: bool = False

    assert keyed_fields(Later()) == keyed_fields(Recipe())
    assert keyed_fields(Later(nesterov=True)) == keyed_fields(Recipe()) | {"nesterov": True}
    # The fields of version 1 stay in every key, at any value; the others only away from their defaults.
    assert set(keyed_fields(Recipe())) == KEY_FIELDS
    assert keyed_fields(Recipe(precision="fp32"))["precision"] == "fp32"
